"""Day-2 verbs: start a CronJob's run now, suspend and resume a Job or CronJob.

``job_from_cron_job`` is pure (the Job ``kubectl create job --from=cronjob/NAME`` would make:
the CronJob's job template, owned by the CronJob, annotated as a manual run); the functions
below it send one request each through ``Cluster``. A manual run writes to its own output
directory like a scheduled one: the pod's ``KUBETRAIN_JOB_NAME`` comes from its job-name label
(downward API), so ``<train.output>/<job name>``. Like a Job from ``submit``, a manual run
carries the time it was asked for (``KUBETRAIN_SUBMITTED_AT``): its goodput ledger counts the
wait from then; scheduled runs carry none.
"""

from __future__ import annotations

import copy
import datetime as dt
import time

from jobs.cluster import Cluster, Conflict, NotFound
from jobs.submit import _managed, stamped

MANUAL_ANNOTATION = {"cronjob.kubernetes.io/instantiate": "manual"}  # what kubectl sets
MAX_JOB_NAME = 63


def manual_job_name(cron_name: str, now: float | None = None) -> str:
    """``<cron>-m<seconds since the epoch, base 36>``: unique per second, sorts by time, and
    fits a Job name (a CronJob's name has at most 52 characters)."""
    n, digits = int(time.time() if now is None else now), ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"{cron_name}-m{digits or '0'}"[:MAX_JOB_NAME]


def job_from_cron_job(cron: dict, job_name: str) -> dict:
    """The Job a manual run of ``cron`` is (its template, owned by it)."""
    template = copy.deepcopy(cron["spec"]["jobTemplate"])
    meta = cron["metadata"]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    annotations = {**((template.get("metadata") or {}).get("annotations") or {}), **MANUAL_ANNOTATION}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": meta.get("namespace", ""),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": template["spec"],
    }


def _managed_object(cluster: Cluster, kind: str, namespace: str, name: str) -> dict:
    obj = cluster.get(kind, namespace, name)
    if not _managed(obj):
        raise Conflict(f"{kind.lower()} {namespace}/{name} was not made by kubetrain; "
                       "use kubectl for it")
    return obj


def run_now(cluster: Cluster, namespace: str, cron_name: str, job_name: str = "",
            dry_run: bool = False, now: dt.datetime | None = None) -> dict:
    """Create a Job from CronJob ``cron_name``'s template now; returns the created Job."""
    try:
        cron = _managed_object(cluster, "CronJob", namespace, cron_name)
    except NotFound:
        try:
            cluster.get("Job", namespace, cron_name)
            hint = f"; {cron_name!r} is a Job: submit its spec again under a new name"
        except NotFound:
            hint = f" (python -m jobs list -n {namespace})"
        raise NotFound(f"no cronjob named {cron_name!r} in namespace {namespace!r}{hint}") from None
    job = stamped(job_from_cron_job(cron, job_name or manual_job_name(cron_name)),
                  now or dt.datetime.now(dt.timezone.utc))
    return cluster.create(namespace, job, dry_run=dry_run)


def set_suspended(cluster: Cluster, namespace: str, name: str, suspended: bool) -> tuple[str, dict]:
    """Set ``spec.suspend`` of the Job or CronJob ``name``: (kind, the patched object).

    A suspended CronJob starts no new runs (a running one goes on); a suspended Job's pods are
    deleted (the trainer gets SIGTERM, checkpoints, exits 143) and recreated on resume, where it
    continues from that checkpoint."""
    for kind in ("CronJob", "Job"):
        try:
            _managed_object(cluster, kind, namespace, name)
        except NotFound:
            continue
        return kind, cluster.patch(kind, namespace, name, {"spec": {"suspend": suspended}})
    raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                   f"(python -m jobs list -n {namespace})")
