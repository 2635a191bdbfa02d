"""Where a Job's time went, seen from the cluster: ``jobs status`` prints it under the Job.

The moments come from the API objects, each written by the component that caused it: submitted
(the Job's creationTimestamp), admitted (Kueue's Workload, ``Admitted`` condition), scheduled
(the first pod's ``PodScheduled``), started (its container's ``startedAt``), each preemption (a
pod that ended with 143, the trainer's checkpoint-and-stop), each resume (the next pod's start)
and finished (the Job's ``completionTime``, or its ``Failed`` condition). The spans between them
are queued (submitted to admitted), starting (admitted to the first container start) and running
(from there to the end, or now). Pure functions of plain dicts.
"""

from __future__ import annotations

import datetime as dt

from jobs.follow import _time, sorted_pods
from jobs.render import CONTAINER
from trainer.core.errors import EXIT_PREEMPTED


def _condition_time(obj: dict, kind: str) -> dt.datetime | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def _container(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def _started(pod: dict) -> dt.datetime | None:
    state = _container(pod).get("state") or {}
    for key in ("running", "terminated"):
        if (state.get(key) or {}).get("startedAt"):
            return _time(state[key]["startedAt"])
    return None


def events(job: dict, pods: list[dict], workload: dict | None = None) -> list[tuple[str, dt.datetime]]:
    """(what, when) in time order."""
    out: list[tuple[str, dt.datetime]] = []
    submitted = _time(job["metadata"].get("creationTimestamp"))
    if submitted:
        out.append(("submitted", submitted))
    admitted = _condition_time(workload, "Admitted") if workload else None
    if admitted:
        out.append(("admitted", admitted))
    pods = sorted_pods(pods)
    scheduled = [t for t in (_condition_time(p, "PodScheduled") for p in pods) if t]
    if scheduled:
        out.append(("scheduled", min(scheduled)))
    first = True
    for pod in pods:
        start = _started(pod)
        if start:
            out.append(("started" if first else "resumed", start))
            first = False
        term = (_container(pod).get("state") or {}).get("terminated") or {}
        if term.get("exitCode") == EXIT_PREEMPTED and term.get("finishedAt"):
            out.append(("preempted (checkpoint saved, exit 143)", _time(term["finishedAt"])))
    st = job.get("status") or {}
    end = _time(st.get("completionTime")) or _condition_time(job, "Failed")
    if end:
        out.append(("finished" if st.get("completionTime") else "failed", end))
    return sorted(out, key=lambda e: e[1])


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def summary(found: list[tuple[str, dt.datetime]], now: dt.datetime) -> str:
    """'queued 12s, starting 8s, running 1m05s (1 preemption), total 1m25s' ('' if unknown)."""
    when = {}
    for what, t in found:
        when.setdefault(what, t)
    submitted = when.get("submitted")
    if submitted is None:
        return ""
    end = when.get("finished") or when.get("failed")
    last = end or now
    parts = []
    admitted = when.get("admitted")
    started = when.get("started")
    if admitted:
        parts.append(f"queued {_span((admitted - submitted).total_seconds())}")
    elif not started and not end:
        parts.append(f"waiting {_span((now - submitted).total_seconds())}")
    if started:
        parts.append(f"starting {_span((started - (admitted or submitted)).total_seconds())}")
        preempted = sum(1 for what, _ in found if what.startswith("preempted"))
        running = f"running {_span((last - started).total_seconds())}"
        if preempted:
            running += f" ({preempted} preemption{'s' if preempted > 1 else ''})"
        parts.append(running)
    parts.append(f"total {_span((last - submitted).total_seconds())}")
    return ", ".join(parts)


def lines(job: dict, pods: list[dict], workload: dict | None, now: dt.datetime) -> list[str]:
    """The lines ``status`` prints: the spans, then each moment."""
    found = events(job, pods, workload)
    text = summary(found, now)
    if not text:
        return []
    start = found[0][1]
    moments = ", ".join(f"{what} +{_span((t - start).total_seconds())}" for what, t in found[1:])
    return [f"  time: {text}"] + ([f"  timeline: {moments}"] if moments else [])
