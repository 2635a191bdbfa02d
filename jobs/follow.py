"""Following a Job: its state, its pods' problems, waiting for it, its logs, and listings.

The pure part reads API objects (plain dicts): ``job_state``, ``pod_problem``,
``explain_failure``. The loops (``wait``, ``stream_logs``) receive a ``Cluster`` and wait by
watch, in windows of a few seconds re-checked against a deadline, never by sleeping.

A multi-worker Job (``workers`` > 1, an Indexed Job) has one pod per worker index at a time;
``worker_phases`` gives each index's newest pod, ``status``/``wait`` show them, and ``logs``
follows worker 0 unless asked for another worker or all of them.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from jobs.cluster import Cluster, Gone, NotFound
from jobs.render import CONTAINER, JOB_NAME_LABEL, MANAGED_BY
from jobs.workers import COMPLETION_INDEX_ANNOTATION
from trainer.errors import exit_code

WINDOW_SECONDS = 10  # how long one watch runs before the loop looks at the pods again

# Container waiting reasons that do not fix themselves.
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "RunContainerError")
FAILURE_HINTS = {
    "DeadlineExceeded": "it ran longer than active_deadline_seconds",
    "BackoffLimitExceeded": "its pods failed more often than backoff_limit allows",
    "PodFailurePolicy": "the trainer exited with a code that is never retried",
}


@dataclass(frozen=True)
class JobState:
    phase: str  # Suspended, Pending, Running, Succeeded, Failed
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def _conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"}


def job_state(job: dict) -> JobState:
    conds = _conditions(job)
    status = job.get("status") or {}
    if "Complete" in conds:
        return JobState("Succeeded")
    for kind in ("Failed", "FailureTarget"):  # FailureTarget: decided, pods still terminating
        if kind in conds:
            return JobState("Failed", conds[kind].get("reason", ""), conds[kind].get("message", ""))
    if "Suspended" in conds or (job.get("spec") or {}).get("suspend"):
        queue = (job.get("metadata", {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        why = f"waiting for Kueue to admit it from queue {queue!r}" if queue else "suspended"
        return JobState("Suspended", "Suspended", why)
    if status.get("active"):
        return JobState("Running" if status.get("ready") else "Pending")
    return JobState("Pending")


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 5h, 3d."""
    then = _time(timestamp)
    if then is None:
        return "-"
    seconds = max(0, int(((now or _now()) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ago(timestamp: str | None) -> str:
    return f"{age(timestamp)} ago" if timestamp else "never"


def worker_index(pod: dict) -> int | None:
    """The pod's completion index in an Indexed (multi-worker) Job, else None."""
    raw = (pod.get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(raw) if raw is not None and str(raw).isdigit() else None


def worker_phases(pods: list[dict]) -> dict[int, str]:
    """{index: phase of that worker's newest pod} for an Indexed Job's pods ({} otherwise)."""
    out: dict[int, str] = {}
    for pod in sorted_pods(pods):
        index = worker_index(pod)
        if index is not None:
            problem = pod_problem(pod)
            out[index] = problem[0] if problem else (pod.get("status") or {}).get("phase", "Pending")
    return dict(sorted(out.items()))


def _workers_text(phases: dict[int, str]) -> str:
    return "workers " + ", ".join(f"{i} {phase}" for i, phase in phases.items())


def sorted_pods(pods: list[dict]) -> list[dict]:
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))


def _container_status(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def pod_problem(pod: dict) -> tuple[str, str, dt.datetime | None] | None:
    """(reason, message, since) when a pod cannot start by itself, else None."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return (cond.get("reason") or "Unschedulable", cond.get("message", ""),
                    _time(cond.get("lastTransitionTime")))
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in STUCK_REASONS:
        return waiting["reason"], waiting.get("message", ""), None
    return None


def create_problem(events: list[dict]) -> tuple[str, str, dt.datetime | None] | None:
    """(reason, message, since) when the newest of a Job's events says it cannot create pods
    (a missing ServiceAccount, a quota, an admission webhook), else None."""
    if not events or events[-1].get("reason") != "FailedCreate":
        return None
    first = events[-1].get("firstTimestamp") or events[-1].get("eventTime")
    return "FailedCreate", events[-1].get("message", ""), _time(first)


def exit_summary(pod: dict) -> str:
    """'exit 2 (bad configuration: ...)' for a terminated trainer container, else ''.

    The meaning comes from the trainer's exit-code table (``trainer/errors.py``)."""
    term = (_container_status(pod).get("state") or {}).get("terminated") or {}
    if not term:
        return ""
    code = term.get("exitCode")
    meaning = "out of memory: raise 'memory' in the spec" if term.get("reason") == "OOMKilled" \
        else exit_code(code).explain()
    return f"exit {code} ({meaning})"


def explain_failure(job: dict, pods: list[dict]) -> str:
    """Why the Job failed, in a few lines: the controller's reason, the exit code's meaning and
    the last lines the trainer printed (terminationMessagePolicy FallbackToLogsOnError)."""
    state = job_state(job)
    name = job["metadata"]["name"]
    hint = FAILURE_HINTS.get(state.reason, "")
    lines = [f"job {name} failed: {state.reason or 'Failed'}"
             + (f" ({hint})" if hint else "") + (f": {state.message}" if state.message else "")]
    failed = [p for p in sorted_pods(pods) if exit_summary(p)]
    if failed:
        last = failed[-1]
        lines.append(f"  last pod {last['metadata']['name']}: {exit_summary(last)}")
        term = (_container_status(last).get("state") or {}).get("terminated") or {}
        tail = [t for t in (term.get("message") or "").strip().splitlines() if t.strip()][-5:]
        lines.extend(f"  | {t}" for t in tail)
    return "\n".join(lines)


def pod_selector(job_name: str) -> str:
    return f"{JOB_NAME_LABEL}={job_name}"


def resolve_job(cluster: Cluster, namespace: str, name: str) -> str:
    """``name`` if it is a Job; for a CronJob, the newest Job it created."""
    try:
        cluster.get("Job", namespace, name)
        return name
    except NotFound:
        pass
    try:
        cron = cluster.get("CronJob", namespace, name)
    except NotFound:
        raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                       f"(python -m jobs list -n {namespace})") from None
    jobs = _cron_runs(cluster, namespace, cron)
    if not jobs:
        raise NotFound(f"cronjob {namespace}/{name} has not started a run yet "
                       f"(schedule {cron['spec']['schedule']!r}, {cron['spec'].get('timeZone', 'UTC')})")
    return jobs[-1]["metadata"]["name"]


def _cron_runs(cluster: Cluster, namespace: str, cron: dict) -> list[dict]:
    uid = cron["metadata"].get("uid")
    items = cluster.list("Job", namespace, f"app.kubernetes.io/instance={cron['metadata']['name']}")["items"]
    runs = [j for j in items if any(o.get("uid") == uid for o in j["metadata"].get("ownerReferences") or [])]
    return sorted_pods(runs)


# ----------------------------------------------------------------------------- wait


def wait(cluster: Cluster, namespace: str, name: str, *, timeout_seconds: float,
         pending_timeout_seconds: float, report: Callable[[str], None] = lambda line: None,
         clock: Callable[[], float] = time.monotonic, now: Callable[[], dt.datetime] = _now,
         window_seconds: float = WINDOW_SECONDS) -> tuple[int, str]:
    """Wait for Job ``name`` to finish. (0, message) on success; (1, why) when it failed, a pod
    is stuck (unschedulable, image missing) longer than ``pending_timeout_seconds``, the Job was
    deleted, or ``timeout_seconds`` passed. Progress lines go to ``report`` as they change."""
    deadline = clock() + timeout_seconds
    first_seen: dict[tuple[str, str], dt.datetime] = {}
    last_line = ""
    while True:
        try:
            job = cluster.get("Job", namespace, name)
        except NotFound:
            return 1, f"job {namespace}/{name} was deleted while waiting"
        state = job_state(job)
        pods = cluster.list("Pod", namespace, pod_selector(name))["items"]
        if state.phase == "Succeeded":
            return 0, f"job {name} succeeded"
        if state.phase == "Failed":
            return 1, explain_failure(job, pods)

        seen_now: dict[tuple[str, str], dt.datetime] = {}
        problems = [(f"pod {p['metadata']['name']}", pod_problem(p)) for p in pods]
        if not any((p.get("status") or {}).get("phase") in ("Pending", "Running") for p in pods):
            # no pod to look at: the Job controller may be failing to create one
            problems.append((f"job {name}", create_problem(cluster.events(namespace, "Job", name))))
        for who, problem in problems:
            if problem is None:
                continue
            reason, message, since = problem
            key = (who, reason)
            since = min(filter(None, (since, first_seen.get(key), now())))
            seen_now[key] = since
            stuck = (now() - since).total_seconds()
            if stuck >= pending_timeout_seconds:
                return 1, (f"job {name}: {who} stuck {reason} for {int(stuck)}s "
                           f"(--pending-timeout {int(pending_timeout_seconds)}): {message}")
        first_seen = seen_now

        line = progress_line(name, state, pods)
        if not pods and problems[-1][1]:
            line += f" - {problems[-1][1][0]}: {problems[-1][1][1]}"
        if line != last_line:
            report(line)
            last_line = line
        remaining = deadline - clock()
        if remaining <= 0:
            return 1, f"timed out after {int(timeout_seconds)}s waiting for job {name} ({state.phase})"
        try:
            for _kind, _obj in cluster.watch("Job", namespace, name=name,
                                             resource_version=job["metadata"].get("resourceVersion", ""),
                                             timeout_seconds=min(remaining, window_seconds)):
                break  # something changed: look again
        except Gone:
            pass


def progress_line(name: str, state: JobState, pods: list[dict]) -> str:
    parts = [f"job {name}: {state.phase}"]
    if state.message and state.phase == "Suspended":
        parts.append(f"({state.message})")
    pods = sorted_pods(pods)
    phases = worker_phases(pods)
    if phases:
        parts.append(f"- {_workers_text(phases)}")
        restarts = len(pods) - len(phases)
        if restarts:
            parts.append(f"({restarts} pod(s) replaced)")
    elif pods:
        pod = pods[-1]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        problem = pod_problem(pod)
        detail = f"{problem[0]}: {problem[1]}" if problem else phase
        parts.append(f"- pod {pod['metadata']['name']} {detail}")
        if len(pods) > 1:
            parts.append(f"(attempt {len(pods)})")
    return " ".join(parts)


# ----------------------------------------------------------------------------- logs


def stream_logs(cluster: Cluster, namespace: str, name: str, *, follow: bool, all_pods: bool,
                report: Callable[[str], None] = lambda line: None,
                window_seconds: float = WINDOW_SECONDS, tail_lines: int | None = None,
                since_seconds: float | None = None, timestamps: bool = False,
                worker: int | None = None, all_workers: bool = False) -> Iterator[str]:
    """The trainer's log lines. Without ``follow``: the newest pod's (every pod's with
    ``all_pods``). With ``follow``: from the newest pod on, moving to each retry's new pod,
    until the Job finishes. ``tail_lines``/``since_seconds``/``timestamps``: kubectl's
    --tail/--since/--timestamps, per pod.

    A multi-worker Job: worker 0's pods unless ``worker`` names another; ``all_workers``
    interleaves every worker's lines, each prefixed with ``[worker K]``."""
    opts = {"tail_lines": tail_lines, "since_seconds": since_seconds, "timestamps": timestamps}
    if all_workers:
        yield from _all_workers(cluster, namespace, name, follow=follow, all_pods=all_pods,
                                report=report, window_seconds=window_seconds, **opts)
        return
    pods = _pods_of(cluster, namespace, name, worker)
    if not follow:
        chosen = pods if all_pods else pods[-1:]
        if not chosen:
            state = job_state(cluster.get("Job", namespace, name))
            raise NotFound(f"job {name} has no pods yet ({state.phase}); try: python -m jobs logs "
                           f"{name} -n {namespace} -f")
        for pod in chosen:
            if len(chosen) > 1:
                yield f"==> pod {pod['metadata']['name']} <=="
            yield from cluster.logs(namespace, pod["metadata"]["name"], CONTAINER, **opts)
        return

    done: set[str] = set() if all_pods else {p["metadata"]["name"] for p in pods[:-1]}
    reported: set[tuple[str, str]] = set()
    while True:
        job = cluster.get("Job", namespace, name)
        pods = _pods_of(cluster, namespace, name, worker)
        todo = [p for p in pods if p["metadata"]["name"] not in done]
        if not todo:
            state = job_state(job)
            if state.done:
                report(f"job {name}: {state.phase}" + (f" ({state.reason})" if state.reason else ""))
                return
            _watch_window(cluster, "Job", namespace, job, name, window_seconds)
            continue
        pod = todo[0]
        pod_name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase == "Pending":
            problem = pod_problem(pod)
            if problem and (pod_name, problem[0]) not in reported:
                reported.add((pod_name, problem[0]))
                report(f"pod {pod_name} {problem[0]}: {problem[1]}")
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                done.add(pod_name)
            else:
                _watch_window(cluster, "Pod", namespace, pod, pod_name, window_seconds)
            continue
        report(f"==> pod {pod_name} ({phase}) <==")
        yield from cluster.logs(namespace, pod_name, CONTAINER, follow=True, **opts)
        done.add(pod_name)
        try:
            pod = cluster.get("Pod", namespace, pod_name)
        except NotFound:
            continue
        summary = exit_summary(pod)
        if summary:
            report(f"pod {pod_name}: {summary}")


def _pods_of(cluster: Cluster, namespace: str, name: str, worker: int | None) -> list[dict]:
    """The Job's pods, oldest first; of one worker (default 0) when the Job is multi-worker."""
    pods = sorted_pods(cluster.list("Pod", namespace, pod_selector(name))["items"])
    if any(worker_index(p) is not None for p in pods):
        return [p for p in pods if worker_index(p) == (worker or 0)]
    if worker:
        raise NotFound(f"job {name} has no worker {worker} (it is not a multi-worker job, or its "
                       "pods are not created yet)")
    return pods


def _all_workers(cluster: Cluster, namespace: str, name: str, *, follow: bool, all_pods: bool,
                 report: Callable[[str], None], window_seconds: float, **opts) -> Iterator[str]:
    """Every worker's log lines prefixed ``[worker K]``; with ``follow``, one stream per worker."""
    job = cluster.get("Job", namespace, name)
    count = int((job.get("spec") or {}).get("completions") or 1)
    if not follow:
        for k in range(count):
            for line in stream_logs(cluster, namespace, name, follow=False, all_pods=all_pods,
                                    worker=k, **opts):
                yield f"[worker {k}] {line}"
        return
    lines: queue.Queue = queue.Queue()

    def pump(k: int) -> None:
        try:
            for line in stream_logs(cluster, namespace, name, follow=True, all_pods=all_pods,
                                    report=lambda text: lines.put(("report", f"[worker {k}] {text}")),
                                    window_seconds=window_seconds, worker=k, **opts):
                lines.put(("line", f"[worker {k}] {line}"))
        except Exception as exc:  # noqa: BLE001 (shown, and the other workers go on)
            lines.put(("report", f"[worker {k}] {exc}"))
        finally:
            lines.put(("done", k))

    for k in range(count):
        threading.Thread(target=pump, args=(k,), daemon=True, name=f"logs-worker-{k}").start()
    running = count
    while running:
        kind, item = lines.get()
        if kind == "done":
            running -= 1
        elif kind == "report":
            report(item)
        else:
            yield item


def _watch_window(cluster: Cluster, kind: str, namespace: str, obj: dict, name: str,
                  window_seconds: float) -> None:
    """Block until ``obj`` changes or ``window_seconds`` pass."""
    try:
        for _ in cluster.watch(kind, namespace, name=name,
                               resource_version=obj["metadata"].get("resourceVersion", ""),
                               timeout_seconds=window_seconds):
            return
    except Gone:
        return


# ----------------------------------------------------------------------------- status, list


def status_text(cluster: Cluster, namespace: str, name: str) -> str:
    """A few lines on the Job or CronJob ``name`` and its pods or runs."""
    try:
        job = cluster.get("Job", namespace, name)
    except NotFound:
        job = None
    if job is not None:
        state = job_state(job)
        st = job.get("status") or {}
        lines = [f"job {name} (namespace {namespace}): {state.phase}"
                 + (f" - {state.reason}" if state.reason else "")
                 + (f": {state.message}" if state.message else ""),
                 (f"  created {age(job['metadata'].get('creationTimestamp'))} ago; "
                  f"pods active {st.get('active', 0)}, succeeded {st.get('succeeded', 0)}, "
                  f"failed {st.get('failed', 0)} (backoffLimit {job['spec'].get('backoffLimit')})")]
        args = job["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if "--output" in args:
            # a CronJob's run: the kubelet expands $(KUBETRAIN_JOB_NAME) to the Job's name
            output = args[args.index("--output") + 1].replace("$(KUBETRAIN_JOB_NAME)", name)
            lines.append(f"  output {output}")
        pods = sorted_pods(cluster.list("Pod", namespace, pod_selector(name))["items"])
        phases = worker_phases(pods)
        if phases:
            lines.append(f"  {len(phases)} of {job['spec'].get('completions')} {_workers_text(phases)}"
                         f" (service {job['spec']['template']['spec'].get('subdomain', '-')})")
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase", "Pending")
            problem = pod_problem(pod)
            detail = exit_summary(pod) or (f"{problem[0]}: {problem[1]}" if problem else "")
            node = (pod.get("spec") or {}).get("nodeName")
            index = worker_index(pod)
            lines.append(f"  pod {pod['metadata']['name']}"
                         + (f"  worker {index}" if index is not None else "")
                         + f"  {phase}  {age(pod['metadata'].get('creationTimestamp'))}"
                         + (f"  node {node}" if node else "") + (f"  {detail}" if detail else ""))
        if state.phase == "Failed":
            lines.append(explain_failure(job, pods))
        return "\n".join(lines)
    try:
        cron = cluster.get("CronJob", namespace, name)
    except NotFound:
        raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                       f"(python -m jobs list -n {namespace})") from None
    spec, st = cron["spec"], cron.get("status") or {}
    lines = [f"cronjob {name} (namespace {namespace}): schedule {spec['schedule']!r} "
             f"({spec.get('timeZone', 'controller local time')})"
             + (", suspended" if spec.get("suspend") else ""),
             (f"  last run {_ago(st.get('lastScheduleTime'))}, last success "
              f"{_ago(st.get('lastSuccessfulTime'))}, active {len(st.get('active') or [])}")]
    for run in _cron_runs(cluster, namespace, cron):
        lines.append(f"  run {run['metadata']['name']}  {job_state(run).phase}  "
                     f"{age(run['metadata'].get('creationTimestamp'))}")
    return "\n".join(lines)


def list_rows(cluster: Cluster, namespace: str) -> list[list[str]]:
    """[KIND, NAME, STATE, AGE, SCHEDULE] for everything kubetrain made in ``namespace``."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    rows = [["KIND", "NAME", "STATE", "AGE", "SCHEDULE"]]
    for cron in cluster.list("CronJob", namespace, selector)["items"]:
        spec = cron["spec"]
        state = "Suspended" if spec.get("suspend") else f"Active {len((cron.get('status') or {}).get('active') or [])}"
        rows.append(["cronjob", cron["metadata"]["name"], state, age(cron["metadata"].get("creationTimestamp")),
                     f"{spec['schedule']} ({spec.get('timeZone', '-')})"])
    for job in sorted_pods(cluster.list("Job", namespace, selector)["items"]):
        owner = next((o["name"] for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == "CronJob"), "")
        rows.append(["job", job["metadata"]["name"], job_state(job).phase,
                     age(job["metadata"].get("creationTimestamp")), f"(run of {owner})" if owner else "-"])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
