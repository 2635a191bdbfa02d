"""Sending a rendered spec to the cluster, idempotently, and taking it away again.

``submit`` creates the ConfigMap, then the Job (or CronJob), then makes the workload own the
ConfigMap so Kubernetes' garbage collector removes both together (``ttlSecondsAfterFinished``,
``delete``). Submitting the same spec twice reports the existing workload; submitting a changed
spec under a name that exists is refused (delete it first, or rename).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobs import render
from jobs.cluster import Cluster, ClusterError, Conflict, NotFound
from jobs.spec import JobSpec, config_map_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    kind: str  # Job or CronJob
    name: str
    namespace: str
    created: bool  # False: the same spec was already there


def _managed(obj: dict) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == render.TOOL


def _hash(obj: dict) -> str:
    return (obj.get("metadata", {}).get("annotations") or {}).get(render.SPEC_HASH_ANNOTATION, "")


def _check_existing(existing: dict, workload: dict, namespace: str) -> None:
    kind, name = workload["kind"], workload["metadata"]["name"]
    if _hash(existing) != _hash(workload):
        what = "is not managed by kubetrain" if not _managed(existing) else "has a different spec"
        raise Conflict(f"{kind.lower()} {namespace}/{name} already exists and {what}; delete it "
                       f"first (python -m jobs delete {name} -n {namespace}) or change 'name'")


def submit(cluster: Cluster, spec: JobSpec, namespace: str) -> Submitted:
    """Create the spec's objects in ``namespace``; idempotent for an unchanged spec."""
    config_map, workload = render.render(spec, namespace)
    kind, name = workload["kind"], workload["metadata"]["name"]
    try:
        _check_existing(cluster.get(kind, namespace, name), workload, namespace)
        return Submitted(kind, name, namespace, created=False)
    except NotFound:
        pass
    try:
        cluster.get("ServiceAccount", namespace, spec.service_account)
    except NotFound:
        raise NotFound(f"serviceaccount {namespace}/{spec.service_account} does not exist, so no pod "
                       "could start: apply k8s/base (kubectl apply -k k8s/overlays/...) to this "
                       "namespace, or set 'service_account' in the spec") from None

    try:
        cluster.create(namespace, config_map)
    except Conflict:
        current = cluster.get("ConfigMap", namespace, spec.config_map_name)
        if not _managed(current):
            raise Conflict(f"configmap {namespace}/{spec.config_map_name} exists and is not managed "
                           "by kubetrain; refusing to overwrite it (change 'name')") from None
        # Left by an earlier submit that stopped before creating the workload.
        config_map["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        cluster.replace_config_map(namespace, config_map)

    try:
        created = cluster.create(namespace, workload)
    except Conflict:  # someone submitted the same name a moment ago
        _check_existing(cluster.get(kind, namespace, name), workload, namespace)
        return Submitted(kind, name, namespace, created=False)
    try:
        cluster.set_owner(namespace, spec.config_map_name, created)
    except ClusterError as exc:  # the workload runs fine; only the clean-up is manual
        log.warning("could not attach configmap %s to %s %s: %s", spec.config_map_name,
                    kind.lower(), name, exc)
    return Submitted(kind, name, namespace, created=True)


def delete(cluster: Cluster, name: str, namespace: str) -> str:
    """Delete the Job or CronJob ``name`` made by kubetrain, its pods and its ConfigMap.

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
        try:
            cluster.delete("ConfigMap", namespace, config_map_name(name))
        except NotFound:
            pass  # already collected through its owner reference
        return kind
    raise NotFound(f"no job or cronjob named {name!r} in namespace {namespace!r} "
                   f"(python -m jobs list -n {namespace})")
