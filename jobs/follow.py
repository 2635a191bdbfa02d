"""Following a Job: its state, its pods' problems, and waiting for it.

The pure part reads API objects (plain dicts): ``job_state``, ``pod_problem``,
``explain_failure``. The loop (``wait``) receives a ``Cluster`` and waits by watch, in windows
of a few seconds re-checked against a deadline, never by sleeping. An API server restart breaks
the watch: the loop reads the Job and its pods again (the reads retry while it is down), so
the answer is always the Job's own state, never a guess made while it was unreachable. Its logs are ``jobs.logs``;
the ``jobs status`` text is ``jobs.describe``; both read Jobs through the helpers here.

A multi-worker Job (``workers`` > 1, an Indexed Job) has one pod per worker index at a time;
``worker_phases`` gives each index's newest pod, ``status``/``wait`` show them, and ``logs``
follows worker 0 unless asked for another worker or all of them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs import pending
from jobs.cluster import Cluster, Gone, NotFound, Unreachable
from jobs.render import CONTAINER, JOB_NAME_LABEL
from jobs.workers import COMPLETION_INDEX_ANNOTATION
from trainer.core.errors import exit_code

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

    The meaning comes from the trainer's exit-code table (``trainer/core/errors.py``)."""
    term = (_container_status(pod).get("state") or {}).get("terminated") or {}
    if not term:
        return ""
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":  # the kubelet's word: the kernel killed it at its limit
        limit = _memory_limit(pod)
        meaning = ("out of memory" + (f" (limit {limit})" if limit else "")
                   + ": raise 'memory' in the spec")
    else:
        meaning = exit_code(code).explain()
    return f"exit {code} ({meaning})"


def _memory_limit(pod: dict) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


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
        elif state.phase in ("Suspended", "Pending"):
            why = pending.diagnose(cluster, job, pods)
            if why and state.phase == "Suspended":
                line = f"job {name}: Suspended - {why}"
            elif why:
                line += f" ({why})"
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
        except Unreachable as exc:  # the API server went away mid-watch: get and list again
            cluster.wait_out(exc)


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

