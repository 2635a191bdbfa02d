"""Sending a rendered spec to the cluster, idempotently, and taking it away again.

``submit`` applies the ConfigMap and the Job (or CronJob) with server-side apply (field
manager ``kubetrain``), then makes the workload own the ConfigMap so Kubernetes' garbage
collector removes both together (``ttlSecondsAfterFinished``, ``delete``). A multi-worker Job's
headless Service is created right after the Job, owned by it from birth (the workers retry
until their names resolve).

* the same spec again: nothing is sent, the existing workload is reported ("unchanged");
* a changed spec for a CronJob: both objects are applied in place ("configured"): the CronJob
  keeps its uid, its runs and their history, and the next run uses the new template;
* a changed spec for a Job that exists: refused. A Job's pod template cannot change once it
  ran; the message says how out (delete it, or rename);
* ``dry_run``: the API server validates and defaults everything (admission included) and
  stores nothing (``kubectl apply --dry-run=server``).

A Job created here carries its submission time in the trainer container's environment
(``KUBETRAIN_SUBMITTED_AT``, RFC 3339 UTC): every pod of the Job gets the same value, and the
trainer's goodput ledger counts the wait from it (``trainer/training/ledger.py``). It is added
here, not in ``render``: rendering stays a pure function of the spec (golden manifests), and the
spec hash that tells a resubmission from a change is the rendered one's. A CronJob's template is
fixed when the CronJob is submitted, so its scheduled runs carry none (their ledgers start at the
pod's start); ``jobs run-now`` stamps the Job it creates (``control.run_now``).

Objects of the same name that kubetrain did not make are never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from jobs import render, workers
from jobs.cluster import Cluster, ClusterError, Conflict, NotFound
from jobs.spec import JobSpec, config_map_name
from trainer.core.contract import SUBMITTED_ENV

log = logging.getLogger(__name__)

CREATED, CONFIGURED, UNCHANGED = "created", "configured", "unchanged"


@dataclass(frozen=True)
class Submitted:
    kind: str  # Job or CronJob
    name: str
    namespace: str
    action: str  # created, configured (a CronJob changed in place) or unchanged
    dry_run: bool = False
    objects: list = field(default_factory=list)  # what the API server returned (or holds)

    @property
    def created(self) -> bool:
        return self.action == CREATED


def _managed(obj: dict) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == render.TOOL


def _hash(obj: dict) -> str:
    return (obj.get("metadata", {}).get("annotations") or {}).get(render.SPEC_HASH_ANNOTATION, "")


def _get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict | None:
    try:
        return cluster.get(kind, namespace, name)
    except NotFound:
        return None


def _action(existing: dict | None, workload: dict, namespace: str) -> str:
    """What submitting ``workload`` over ``existing`` means, or Conflict when it must not."""
    if existing is None:
        return CREATED
    kind, name = workload["kind"], workload["metadata"]["name"]
    if not _managed(existing):
        raise Conflict(f"{kind.lower()} {namespace}/{name} already exists and is not managed by "
                       "kubetrain; change 'name' (kubetrain never touches objects it did not make)")
    if _hash(existing) == _hash(workload):
        return UNCHANGED
    if kind == "Job":
        raise Conflict(f"job {namespace}/{name} already exists with a different spec, and a Job "
                       "cannot change once it ran: delete it first (python -m jobs delete "
                       f"{name} -n {namespace}) and submit again, or change 'name'")
    return CONFIGURED


def stamped(workload: dict, when: dt.datetime) -> dict:
    """``workload`` with its submission time in the trainer container's env (Jobs only)."""
    if workload["kind"] != "Job":
        return workload
    pod = workload["spec"]["template"]["spec"]
    value = when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    containers = [{**c, "env": [*(e for e in c.get("env", []) if e.get("name") != SUBMITTED_ENV),
                                {"name": SUBMITTED_ENV, "value": value}]}
                  if c["name"] == render.CONTAINER else c for c in pod["containers"]]
    return {**workload, "spec": {**workload["spec"], "template": {
        **workload["spec"]["template"], "spec": {**pod, "containers": containers}}}}


def submit(cluster: Cluster, spec: JobSpec, namespace: str, dry_run: bool = False,
           now: dt.datetime | None = None) -> Submitted:
    """Apply the spec's objects in ``namespace`` (see the module docstring); ``now`` is the
    submission time a new Job carries (the current time by default)."""
    config_map, workload, *service = render.render(spec, namespace)
    kind, name = workload["kind"], workload["metadata"]["name"]
    existing = _get(cluster, kind, namespace, name)
    action = _action(existing, workload, namespace)
    if action == UNCHANGED:
        if not dry_run:
            for svc in service:  # an earlier submit may have stopped between the Job and its Service
                _create_service(cluster, namespace, svc, existing)
        return Submitted(kind, name, namespace, action, dry_run, [existing])
    if action == CREATED:
        try:
            cluster.get("ServiceAccount", namespace, spec.service_account)
        except NotFound:
            raise NotFound(f"serviceaccount {namespace}/{spec.service_account} does not exist, so "
                           "no pod could start: apply k8s/base (kubectl apply -k k8s/overlays/...) "
                           "to this namespace, or set 'service_account' in the spec") from None
    current = _get(cluster, "ConfigMap", namespace, spec.config_map_name)
    if current is not None and not _managed(current):
        raise Conflict(f"configmap {namespace}/{spec.config_map_name} exists and is not managed "
                       "by kubetrain; refusing to overwrite it (change 'name')")

    applied_map = cluster.apply(namespace, config_map, dry_run=dry_run)
    if action == CREATED:
        workload = stamped(workload, now or dt.datetime.now(dt.timezone.utc))
    try:
        applied = cluster.apply(namespace, workload, dry_run=dry_run)
    except Conflict:  # someone submitted the same name a moment ago
        existing = cluster.get(kind, namespace, name)
        if _action(existing, workload, namespace) != UNCHANGED:
            raise
        return Submitted(kind, name, namespace, UNCHANGED, dry_run, [existing])
    if action == CREATED and dry_run:
        for svc in service:  # the server validates it too
            cluster.create(namespace, svc, dry_run=True)
    if action == CREATED and not dry_run:
        for svc in service:
            _create_service(cluster, namespace, svc, applied)
        try:
            cluster.set_owner(namespace, spec.config_map_name, applied)
        except ClusterError as exc:  # the workload runs fine; only the clean-up is manual
            log.warning("could not attach configmap %s to %s %s: %s", spec.config_map_name,
                        kind.lower(), name, exc)
    return Submitted(kind, name, namespace, action, dry_run, [applied_map, applied])


def _create_service(cluster: Cluster, namespace: str, svc: dict, owner: dict) -> None:
    """Create a multi-worker Job's headless Service, owned by the Job from birth (created, not
    applied: the launcher may only create, read and delete Services); fine if already there."""
    svc = {**svc, "metadata": {**svc["metadata"], "ownerReferences": [
        {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
         "uid": owner["metadata"]["uid"]}]}}
    svc_name = svc["metadata"]["name"]
    try:
        cluster.create(namespace, svc)
    except Conflict:
        if not _managed(cluster.get("Service", namespace, svc_name)):
            raise Conflict(f"service {namespace}/{svc_name} exists and is not managed by kubetrain, "
                           "so the workers cannot get their names; change 'name'") from None


def delete(cluster: Cluster, name: str, namespace: str) -> str:
    """Delete the Job or CronJob ``name`` made by kubetrain, its pods, its ConfigMap and Service.

    Returns the kind deleted; NotFound if there is neither.
    """
    for kind in ("Job", "CronJob"):
        try:
            obj = cluster.get(kind, namespace, name)
        except NotFound:
            continue
        if not _managed(obj):
            raise Conflict(f"{kind.lower()} {namespace}/{name} was not made by kubetrain; "
                           "delete it with kubectl if you mean it")
        cluster.delete(kind, namespace, name)
        for owned_kind, owned in (("ConfigMap", config_map_name(name)),
                                  ("Service", workers.service_name(name))):
            try:
                if owned_kind == "Service" and not _managed(cluster.get(owned_kind, namespace, owned)):
                    continue  # a single-pod Job has no Service; never delete someone else's
                cluster.delete(owned_kind, namespace, owned)
            except NotFound:
                pass  # none, or already collected through its owner reference
        return kind
    raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                   f"(python -m jobs list -n {namespace})")
