"""Progress of a running Job without its logs: the trainer's ``progress.json`` in the run
directory, found from the Job's own manifest.

Why the run directory and not the pod: on a locked-down cluster the trainer's ServiceAccount has
no API rights (no token is even mounted), so it cannot annotate its pod or Job, and a
termination message exists only once the container has ended. The trainer already writes the
run directory (local or ``gs://``); the launcher reads it back through the trainer's storage
layer (``trainer.storage.small_files``), with the same credentials the user has for the bucket.

The Job's run directory is its container's ``--output`` argument; a CronJob's run has
``$(KUBETRAIN_JOB_NAME)`` in it, which the kubelet expands to the Job's name (``render``).
"""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from jobs import pending, timeline
from jobs.cluster import Cluster, NotFound
from jobs.follow import _cron_runs, age, job_state, pod_selector, sorted_pods
from jobs.render import CONTAINER
from trainer.core.contract import JOB_NAME_VAR
from trainer.core.errors import TrainerError
from trainer.storage import small_files
from trainer.training import progress

log = logging.getLogger(__name__)


def run_output(job: dict) -> str | None:
    """The run directory the Job's trainer writes (``--output``), expanded; None if unknown."""
    containers = job["spec"]["template"]["spec"].get("containers") or []
    container = next((c for c in containers if c.get("name") == CONTAINER), None)
    args = (container or {}).get("args") or []
    if "--output" not in args or args.index("--output") + 1 >= len(args):
        return None
    return args[args.index("--output") + 1].replace(JOB_NAME_VAR, job["metadata"]["name"])


def read_progress(output: str | None) -> tuple[dict | None, str]:
    """(the progress record, "") or (None, why not). Never raises: status must still print."""
    if not output:
        return None, "the Job has no --output"

    try:
        record = progress.parse(small_files.read_text(small_files.join(output, progress.FILE)))
    except TrainerError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read {output}: {exc}"
    except small_files.Unreadable as exc:
        return None, f"{small_files.join(output, progress.FILE)} {exc}"
    return (record, "") if record else (None, "no progress record yet")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def epoch_text(record: dict) -> str:
    """'epoch 3/10' at an epoch's end (3 done); 'epoch 4/10, step 40/187' within the 4th."""
    epoch, epochs = record.get("epoch", 0), record.get("epochs", "?")
    if record.get("step"):
        return f"epoch {epoch + 1}/{epochs}, step {record['step']}/{record.get('steps_per_epoch', '?')}"
    return f"epoch {epoch}/{epochs}"


def progress_text(record: dict, now: dt.datetime | None = None) -> str:
    """One line: 'epoch 4/10, step 40/187, val accuracy 0.9312, 850 img/s, ETA 2m10s'."""
    state = record.get("state", "")
    updated = record.get("updated")
    when = f" (updated {age(updated, now)} ago)" if updated else ""
    if state == "finished":
        acc = record.get("test_accuracy")
        return (f"finished: test accuracy {acc:.4f}" if isinstance(acc, (int, float))
                else "finished") + f", {record.get('epoch')}/{record.get('epochs')} epochs{when}"
    parts = [epoch_text(record)]
    if isinstance(record.get("val_accuracy"), (int, float)):
        parts.append(f"val accuracy {record['val_accuracy']:.4f}")
    if isinstance(record.get("images_per_second"), (int, float)):
        parts.append(f"{record['images_per_second']:.0f} img/s")
    if state in ("training", "evaluating"):
        parts.append(f"ETA {_duration(record.get('eta_seconds'))}")
    if state and state != "training":
        parts.append(state + (f": {record['error']}" if record.get("error") else ""))
    if (record.get("attempt") or 1) > 1:
        parts.append(f"attempt {record['attempt']}")
    return ", ".join(parts) + when


def job_summary(job: dict, with_progress: bool = True) -> dict:
    """A Job's state, run directory and progress record, as plain data (``-o json``)."""
    state = job_state(job)
    output = run_output(job)
    out = {"kind": "Job", "name": job["metadata"]["name"],
           "namespace": job["metadata"].get("namespace", ""), "state": state.phase,
           "reason": state.reason, "message": state.message,
           "created": job["metadata"].get("creationTimestamp"), "output": output}
    if with_progress:
        record, why = read_progress(output)
        out["progress"] = record
        if why:
            out["progress_unavailable"] = why
    return out


@dataclass(frozen=True)
class Found:
    """What ``status`` looked up, read once: a Job with its pods, or a CronJob with its runs."""

    kind: str  # "Job" or "CronJob"
    obj: dict
    pods: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    why_pending: str = ""  # a Job that has not started: why, in words (jobs.pending)
    workload: dict | None = None  # a queued Job's Kueue Workload (admission time, jobs.timeline)


def lookup(cluster: Cluster, namespace: str, name: str) -> Found:
    """The Job ``name`` and its pods, else the CronJob ``name`` and its runs; NotFound if neither."""
    try:
        job = cluster.get("Job", namespace, name)
    except NotFound:
        job = None
    if job is not None:
        pods = sorted_pods(cluster.list("Pod", namespace, pod_selector(name))["items"])
        why = "" if job_state(job).done else pending.diagnose(cluster, job, pods)
        return Found("Job", job, pods=pods, why_pending=why,
                     workload=pending.find_workload(cluster, job))
    try:
        cron = cluster.get("CronJob", namespace, name)
    except NotFound:
        raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                       f"(python -m jobs list -n {namespace})") from None
    return Found("CronJob", cron, runs=_cron_runs(cluster, namespace, cron))


def status_object(found: Found) -> dict:
    """The Job (with its pods and progress) or CronJob (with its runs' progress), as plain data."""
    if found.kind == "Job":
        job = found.obj
        out = job_summary(job)
        st = job.get("status") or {}
        out.update(active=st.get("active", 0), succeeded=st.get("succeeded", 0),
                   failed=st.get("failed", 0), suspended=bool(job["spec"].get("suspend")))
        # as `kubectl get job NAME -o json` shows them
        out.update(labels=job["metadata"].get("labels") or {},
                   annotations=job["metadata"].get("annotations") or {},
                   conditions=[{key: cond.get(key) for key in ("type", "status", "reason", "message")}
                               for cond in st.get("conditions") or []])
        out["pods"] = [{"name": p["metadata"]["name"],
                        "phase": (p.get("status") or {}).get("phase", "Pending"),
                        "node": (p.get("spec") or {}).get("nodeName")} for p in found.pods]
        out["why_pending"] = found.why_pending or None
        out["timeline"] = [{"event": what, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
                           for what, when in timeline.events(job, found.pods, found.workload)]
        return out
    cron = found.obj
    spec, st = cron["spec"], cron.get("status") or {}
    return {"kind": "CronJob", "name": cron["metadata"]["name"],
            "namespace": cron["metadata"].get("namespace", ""),
            "schedule": spec["schedule"], "timeZone": spec.get("timeZone"),
            "suspended": bool(spec.get("suspend")), "lastScheduleTime": st.get("lastScheduleTime"),
            "lastSuccessfulTime": st.get("lastSuccessfulTime"),
            "runs": summaries(found.runs)}


def summaries(jobs: list[dict]) -> list[dict]:
    """``job_summary`` of each Job, their run directories read in parallel."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(job_summary, jobs))


def progress_lines(obj: dict, now: dt.datetime | None = None) -> list[str]:
    """The lines ``status`` adds under the Job's or CronJob's own: progress and run directory."""
    def line(summary: dict, indent: str) -> str:
        if summary.get("progress"):
            return f"{indent}progress: {progress_text(summary['progress'], now)}"
        return f"{indent}progress: - ({summary.get('progress_unavailable', 'none')})"

    if obj["kind"] == "Job":
        return [line(obj, "  ")]
    lines = []
    for run in obj["runs"]:
        lines.append(f"  run {run['name']}: {run['output'] or '-'}")
        lines.append(line(run, "    "))
    return lines
