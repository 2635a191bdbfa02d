"""``python -m jobs list``: everything kubetrain made in a namespace, with each Job's progress
(read from its run directory, see ``jobs.status``) next to its state."""

from __future__ import annotations

from jobs import output, pending
from jobs.cluster import Cluster
from jobs.follow import age, pod_selector, sorted_pods
from jobs.render import MANAGED_BY
from jobs.status import _duration, epoch_text, run_output, summaries
from trainer.core.contract import JOB_NAME_VAR


def list_objects(cluster: Cluster, namespace: str) -> list[dict]:
    """CronJobs then Jobs (oldest first), as plain data; Jobs carry their progress record."""
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    out = []
    for cron in cluster.list("CronJob", namespace, selector)["items"]:
        spec = cron["spec"]
        active = len((cron.get("status") or {}).get("active") or [])
        out.append({"kind": "CronJob", "name": cron["metadata"]["name"], "namespace": namespace,
                    "state": "Suspended" if spec.get("suspend") else f"Active {active}",
                    "created": cron["metadata"].get("creationTimestamp"),
                    "schedule": spec["schedule"], "timeZone": spec.get("timeZone")})
    jobs = sorted_pods(cluster.list("Job", namespace, selector)["items"])
    for job, summary in zip(jobs, summaries(jobs)):
        owner = next((o["name"] for o in job["metadata"].get("ownerReferences") or []
                      if o.get("kind") == "CronJob"), "")
        why = ""
        if summary["state"] in ("Suspended", "Pending"):
            pods = cluster.list("Pod", namespace, pod_selector(job["metadata"]["name"]))["items"]
            why = pending.diagnose(cluster, job, pods)
        out.append({**summary, "runOf": owner or None, "why_pending": why or None})
    return out


def _short_progress(obj: dict) -> str:
    record = obj.get("progress")
    if obj.get("why_pending") and (not record or record.get("state") == "preempted"):
        return obj["why_pending"]
    if not record:
        return "-"
    if record.get("state") == "finished" and isinstance(record.get("test_accuracy"), (int, float)):
        return f"test acc {record['test_accuracy']:.4f}"
    parts = [epoch_text(record)]
    if isinstance(record.get("val_accuracy"), (int, float)):
        parts.append(f"val {record['val_accuracy']:.4f}")
    if isinstance(record.get("images_per_second"), (int, float)):
        parts.append(f"{record['images_per_second']:.0f} img/s")
    if record.get("state") in ("training", "evaluating") and record.get("eta_seconds") is not None:
        parts.append(f"ETA {_duration(record['eta_seconds'])}")
    elif record.get("state") not in ("training", "evaluating", None):
        parts.append(record["state"])
    return ", ".join(parts)


def rows(objects: list[dict], wide: bool = False) -> list[list[str]]:
    """The table: KIND NAME STATE AGE SCHEDULE PROGRESS (wide: + OUTPUT, UPDATED)."""
    header = ["KIND", "NAME", "STATE", "AGE", "SCHEDULE", "PROGRESS"] + (["OUTPUT", "UPDATED"] if wide else [])
    out = [header]
    for o in objects:
        if o["kind"] == "CronJob":
            row = ["cronjob", o["name"], o["state"], age(o["created"]),
                   f"{o['schedule']} ({o.get('timeZone') or '-'})", "-"]
            extra = ["-", "-"]
        else:
            row = ["job", o["name"], o["state"], age(o["created"]),
                   f"(run of {o['runOf']})" if o.get("runOf") else "-", _short_progress(o)]
            updated = (o.get("progress") or {}).get("updated")
            extra = [o.get("output") or "-", f"{age(updated)} ago" if updated else "-"]
        out.append(row + (extra if wide else []))
    return out


def manifest_rows(manifests: list[dict]) -> list[list[str]]:
    """``render -o wide`` and ``submit -o wide``: one row per manifest, with the run's output."""
    rows = [["KIND", "NAME", "NAMESPACE", "IMAGE", "SCHEDULE", "OUTPUT"]]
    for m in manifests:
        job = m["spec"]["jobTemplate"] if m["kind"] == "CronJob" else m if m["kind"] == "Job" else None
        image = job["spec"]["template"]["spec"]["containers"][0]["image"] if job else "-"
        out = run_output({**job, "metadata": {"name": JOB_NAME_VAR}}) if job else "-"
        rows.append([output.resource_name(m), m["metadata"]["name"], m["metadata"].get("namespace", "-"),
                     image, m["spec"].get("schedule", "-") if m["kind"] == "CronJob" else "-", out or "-"])
    return rows
