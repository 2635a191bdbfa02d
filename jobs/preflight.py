"""``jobs submit --check``: would this spec start, asked before anything is created.

Each check gives a ``Check`` (ok or not, one line). In order: the API server's dry run of every
object (admission and validation included), the trainer's ServiceAccount, the LocalQueue
(``queue:``), the Secrets the spec names (``storage.secret``, ``env_from_secret``), and a node
that could hold the pod (node selector, taints, GPUs, CPU, memory; ``jobs.pending.node_fit``).
A read the launcher may not do (its Role has no Secrets, by design) is reported as not checked,
not as a failure. Nothing is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs import pending, render
from jobs.cluster import Cluster, ClusterError, Forbidden, NotFound
from jobs.spec import JobSpec
from jobs.submit import submit


@dataclass(frozen=True)
class Check:
    ok: bool
    line: str
    checked: bool = True  # False: the launcher may not read what this needs


def _secrets(spec: JobSpec) -> list[str]:
    names = [spec.storage.secret] if spec.storage.credentials == "secret" and spec.storage.secret else []
    names += [ref.split("/", 1)[0] for ref in spec.env_from_secret.values()]
    return sorted(set(names))


def checks(cluster: Cluster, spec: JobSpec, namespace: str) -> list[Check]:
    """Every check, in order; a failed dry run stops there (the rest would say less)."""
    out = []
    try:
        submit(cluster, spec, namespace, dry_run=True)
        out.append(Check(True, "the API server accepts every object (server dry run)"))
    except ClusterError as exc:
        return [Check(False, f"the API server refuses it: {exc}")]

    if spec.queue:
        exists = pending.queue_exists(cluster, namespace, spec.queue)
        if exists is None:
            out.append(Check(True, f"LocalQueue {spec.queue!r} not checked (cannot read LocalQueues)",
                             checked=False))
        elif exists:
            out.append(Check(True, f"LocalQueue {spec.queue!r} exists"))
        else:
            out.append(Check(False, f"LocalQueue {spec.queue!r} does not exist in namespace "
                                    f"{namespace} (or Kueue is not installed): the Job would wait "
                                    "forever; create it (kubectl apply -k k8s/kueue) or fix 'queue'"))

    for name in _secrets(spec):
        try:
            cluster.get("Secret", namespace, name)
            out.append(Check(True, f"Secret {name!r} exists"))
        except NotFound:
            out.append(Check(False, f"Secret {name!r} does not exist in namespace {namespace}: the "
                                    "pod would wait in CreateContainerConfigError"))
        except Forbidden:
            out.append(Check(True, f"Secret {name!r} not checked (the launcher's Role has no access "
                                   "to Secrets, by design)", checked=False))

    workload = render.render(spec, namespace)[1]
    template = (workload["spec"]["jobTemplate"] if workload["kind"] == "CronJob"
                else workload)["spec"]["template"]
    try:
        nodes = cluster.nodes()
    except ClusterError as exc:
        out.append(Check(True, f"nodes not checked ({exc})", checked=False))
        return out
    why = pending.node_fit(template, nodes)
    pods = f"{spec.workers} pods" if spec.workers > 1 else "the pod"
    if why:
        out.append(Check(False, f"no node could hold {pods}: {why}"))
    else:
        out.append(Check(True, f"a node could hold {pods} ({len(nodes)} node(s) looked at)"))
    return out
