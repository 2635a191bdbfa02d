"""``jobs logs``: a Job's pod logs, printed once or followed across pod restarts.

Split from ``jobs.follow`` (state and waiting), whose helpers it reads pods with. Following waits
by watch, in windows of a few seconds, never by sleeping; a log stream cut by an API server
restart is opened again and continues after the last line printed (``_follow_pod``); a multi-worker Job follows worker 0
unless asked for another worker or all of them (one thread per worker, lines interleaved).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator

from jobs.cluster import Cluster, Gone, NotFound, Unreachable
from jobs.follow import (
    WINDOW_SECONDS,
    exit_summary,
    job_state,
    pod_problem,
    pod_selector,
    sorted_pods,
    worker_index,
)
from jobs.render import CONTAINER


# Over 60 lines on purpose: one loop that follows a Job across its retries' pods; split, the
# hand-over between pods (the part that loses lines when wrong) would be spread over functions.
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
        pod = yield from _follow_pod(cluster, namespace, pod_name, **opts)
        done.add(pod_name)
        summary = exit_summary(pod) if pod else ""
        if summary:
            report(f"pod {pod_name}: {summary}")


def _follow_pod(cluster: Cluster, namespace: str, pod_name: str, *, tail_lines: int | None,
                since_seconds: float | None, timestamps: bool,
                clock: Callable[[], float] = time.monotonic) -> Generator[str, None, dict | None]:
    """One pod's log lines, followed until its container ends; returns the pod as last read
    (None when it is gone). A stream that breaks or ends while the container still runs (an
    API server restart) is opened again and continues after the last line printed: the log is
    read again from the same start (the first ``tail_lines`` lines' offset is counted once, a
    ``since_seconds`` window keeps its start time) and the lines already printed are skipped."""
    skip = 0  # lines of the stream not to print (--tail: all but the last N)
    if tail_lines is not None:
        skip = max(0, _count_lines(cluster, namespace, pod_name) - tail_lines)
    started = clock()
    consumed = 0  # lines of the stream already handled (skipped or printed)
    while True:
        since = None if since_seconds is None else since_seconds + (clock() - started)
        broken, before = False, consumed
        try:
            for index, line in enumerate(cluster.logs(namespace, pod_name, CONTAINER, follow=True,
                                                      since_seconds=since, timestamps=timestamps)):
                if index < consumed:
                    continue
                consumed += 1
                if index >= skip:
                    yield line
        except Unreachable as exc:
            cluster.wait_out(exc)
            broken = True
        except NotFound:
            return None
        try:
            pod = cluster.get("Pod", namespace, pod_name)
        except NotFound:
            return None
        if not broken and not _still_running(pod):
            return pod
        if not broken and consumed == before:  # ended, nothing new, status not posted yet
            _watch_window(cluster, "Pod", namespace, pod, pod_name, 2)


def _count_lines(cluster: Cluster, namespace: str, pod_name: str) -> int:
    while True:
        try:
            return sum(1 for _ in cluster.logs(namespace, pod_name, CONTAINER))
        except Unreachable as exc:
            cluster.wait_out(exc)


def _still_running(pod: dict) -> bool:
    """Whether the trainer container of ``pod`` may still write: not terminated, pod not done."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return not (cs.get("state") or {}).get("terminated")
    return True


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
    except Unreachable as exc:  # the API server went away: the caller reads everything again
        cluster.wait_out(exc)

