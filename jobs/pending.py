"""Why a Job has not started, in one line of words: ``jobs status``, ``list`` and ``wait`` print
it, ``jobs submit --check`` runs the same node checks before anything exists.

In the order a Job meets them:

* **Kueue** (a Job with ``queue:``, suspended until admitted): its Workload says whether it is
  waiting for quota (which resource, how much), in a LocalQueue that does not exist, or was
  preempted; its position comes from Kueue's visibility API when the cluster serves it, else
  from the namespace's pending Workloads in Kueue's own order (priority, then age);
* **the scheduler** (``PodScheduled=False``): its message translated with the nodes when the
  launcher may read them: no node with N GPUs free, a taint not tolerated, a node selector no
  node matches;
* **the kubelet**: the image not pulled (its message), a Secret or ConfigMap missing
  (``CreateContainerConfigError``), a volume that cannot mount (``FailedMount`` events).

Every read here may be refused (RBAC) or absent (no Kueue installed): the line then says less,
never fails. The functions on plain API objects are pure; ``diagnose`` does the reads.
"""

from __future__ import annotations

import re

from jobs.checks import parse_quantity
from jobs.cluster import Cluster, ClusterError, NotFound
from jobs.render import CONTAINER, GPU_RESOURCE, QUEUE_LABEL

WORKLOAD_OWNER_KIND = "Job"


def _conds(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _true(obj: dict, kind: str) -> bool:
    return _conds(obj).get(kind, {}).get("status") == "True"


def workload_of(workloads: list[dict], job: dict) -> dict | None:
    """The Workload Kueue made for ``job`` (owned by its uid), newest first."""
    uid = job["metadata"].get("uid")
    mine = [w for w in workloads if any(o.get("kind") == WORKLOAD_OWNER_KIND and o.get("uid") == uid
                                        for o in w["metadata"].get("ownerReferences") or [])]
    mine.sort(key=lambda w: w["metadata"].get("creationTimestamp") or "")
    return mine[-1] if mine else None


def _pending(workload: dict) -> bool:
    return not _true(workload, "QuotaReserved") and not _true(workload, "Finished")


def queue_order(workloads: list[dict], queue: str) -> list[dict]:
    """The pending Workloads of LocalQueue ``queue`` in Kueue's order (BestEffortFIFO and
    StrictFIFO alike): higher priority first, then the older (a re-queued one by its eviction)."""
    def since(w: dict) -> str:
        evicted = _conds(w).get("Evicted", {})
        if evicted.get("status") == "True":
            return evicted.get("lastTransitionTime") or ""
        return w["metadata"].get("creationTimestamp") or ""

    pending = [w for w in workloads if (w.get("spec") or {}).get("queueName") == queue and _pending(w)]
    return sorted(pending, key=lambda w: (-int((w.get("spec") or {}).get("priority") or 0), since(w),
                                          w["metadata"]["name"]))


def kueue_reason(job: dict, workload: dict | None, position: tuple[int, int] | None = None,
                 queue_exists: bool | None = None, readable: bool = True) -> str:
    """Why Kueue has not (or no longer) admitted ``job``; position = (1-based, of how many)."""
    queue = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL, "")
    if queue_exists is False:
        return (f"LocalQueue {queue!r} does not exist in namespace "
                f"{job['metadata'].get('namespace', '')}: Kueue will never admit it (create the "
                "LocalQueue, e.g. kubectl apply -k k8s/kueue, or fix 'queue')")
    if workload is None and not readable:
        return (f"suspended until Kueue admits it from LocalQueue {queue!r} (Kueue's Workloads "
                "cannot be read here: the launcher's Role in k8s/base/launcher-rbac.yaml can)")
    if workload is None:
        return (f"queued for LocalQueue {queue!r}: no Kueue Workload yet (is Kueue running? "
                "without it a queued Job never starts)")
    conds = _conds(workload)
    if _true(workload, "Admitted") or _true(workload, "QuotaReserved"):
        return f"admitted by Kueue from LocalQueue {queue!r}: starting"
    where = f"queued in LocalQueue {queue!r}"
    if position:
        where += f", position {position[0]} of {position[1]}"
        where += f" (behind {position[0] - 1} workload{'s' if position[0] != 2 else ''})" \
            if position[0] > 1 else " (next)"
    evicted = conds.get("Evicted", {})
    if evicted.get("status") == "True" or conds.get("Requeued", {}).get("reason") == "Preempted":
        where += f"; preempted earlier: {evicted.get('message') or evicted.get('reason', '')}".rstrip(": ")
    message = conds.get("QuotaReserved", {}).get("message", "")
    if message:
        where += f": {quota_words(message)}"
    return where


def quota_words(message: str) -> str:
    """Kueue's admission message, shortened to the resource and amount that block it."""
    never = re.search(r"insufficient quota for ([\w./-]*\w) in flavor ([\w.-]+), previously considered "
                      r"podsets requests \(([^)]*)\) \+ current podset request \(([^)]*)\) > maximum "
                      r"capacity \(([^)]*)\)", message)
    if never:
        resource, flavor, before, request, most = never.groups()
        total = f"{request}" if before in ("0", "") else f"{before} + {request}"
        return (f"quota exceeded for {resource}: needs {total}, more than the ClusterQueue's "
                f"{most} in flavor {flavor} (it will not be admitted until the quota grows)")
    busy = re.search(r"insufficient unused quota for ([\w./-]*\w) in flavor ([\w.-]+), (\S+) more needed",
                     message)
    if busy:
        resource, flavor, more = busy.groups()
        return (f"quota in use: {more} more {resource} needed than is free in flavor {flavor} "
                "(admitted when running workloads finish)")
    return message


# ----------------------------------------------------------------------------- scheduler


def _requests(pod_or_template: dict) -> dict[str, float]:
    containers = (pod_or_template.get("spec") or {}).get("containers") or []
    out: dict[str, float] = {}
    for c in containers:
        res = c.get("resources") or {}
        for key, value in {**(res.get("requests") or {}), **(res.get("limits") or {})}.items():
            if key in ("cpu", "memory", GPU_RESOURCE):
                out[key] = max(out.get(key, 0.0), parse_quantity(str(value), key))
    return out


def _tolerated(taint: dict, tolerations: list[dict]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _free(node: dict, pods_on_nodes: dict[str, dict[str, float]] | None) -> dict[str, float]:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    used = (pods_on_nodes or {}).get(node["metadata"]["name"], {})
    return {k: parse_quantity(str(alloc[k]), k) - used.get(k, 0.0)
            for k in ("cpu", "memory", GPU_RESOURCE) if k in alloc}


def node_fit(pod: dict, nodes: list[dict], used: dict[str, dict[str, float]] | None = None) -> str:
    """'' when some node could hold ``pod`` (a Pod or a Job's pod template), else why none can:
    the node selector, a taint, or the resources (with the most any node has)."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    tolerations = spec.get("tolerations") or []
    need = _requests(pod)
    if not nodes:
        return "the cluster has no nodes"
    matching = [n for n in nodes if all((n["metadata"].get("labels") or {}).get(k) == v
                                        for k, v in selector.items())]
    if not matching:
        wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
        return f"node selector matches no node ({wanted}): fix node_selector or add such nodes"
    untainted = []
    taints_seen = []
    for node in matching:
        bad = [t for t in (node.get("spec") or {}).get("taints") or [] if not _tolerated(t, tolerations)]
        if bad:
            taints_seen.append((node["metadata"]["name"], bad[0]))
        else:
            untainted.append(node)
    if not untainted:
        name, taint = taints_seen[0]
        text = f"{taint.get('key')}" + (f"={taint['value']}" if taint.get("value") else "") \
            + f":{taint.get('effect')}"
        return (f"node {name} has taint {text}, not tolerated by the pod"
                + (f" (nor by the other {len(taints_seen) - 1} matching nodes)" if len(taints_seen) > 1 else "")
                + ": add it to 'tolerations' in the spec")
    for resource in (GPU_RESOURCE, "cpu", "memory"):
        if resource not in need:
            continue
        best = max(untainted, key=lambda n: _free(n, used).get(resource, 0.0))
        have = _free(best, used).get(resource, 0.0)
        if have < need[resource]:
            what = {"cpu": "CPUs", "memory": "bytes of memory", GPU_RESOURCE: "GPUs"}[resource]
            return (f"no node has {_amount(need[resource], resource)} {what} "
                    f"(the most allocatable: {_amount(have, resource)} on node "
                    f"{best['metadata']['name']}; {resource})")
    return ""


def _amount(value: float, resource: str) -> str:
    if resource == "memory":
        return f"{value / 2**30:.3g}Gi"
    return f"{value:g}"


def scheduler_words(message: str, pod: dict, nodes: list[dict] | None) -> str:
    """The scheduler's 'Unschedulable' message, explained with the nodes when they are known."""
    if nodes is not None:
        why = node_fit(pod, nodes)
        if why:
            return f"unschedulable: {why}"
    if "untolerated taint" in message:
        return f"unschedulable: a node taint is not tolerated ({message})"
    if "node affinity/selector" in message:
        return f"unschedulable: the node selector matches no free node ({message})"
    match = re.search(r"Insufficient ([\w./-]*\w)", message)
    if match:
        return f"unschedulable: not enough {match.group(1)} free on any node ({message})"
    return f"unschedulable: {message}"


# ----------------------------------------------------------------------------- kubelet


def _container_waiting(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return (cs.get("state") or {}).get("waiting") or {}
    return {}


def kubelet_words(pod: dict, events: list[dict] | None = None) -> str:
    """'' or why the kubelet cannot start the pod: image, Secret/ConfigMap, volume."""
    waiting = _container_waiting(pod)
    reason, message = waiting.get("reason", ""), waiting.get("message", "")
    image = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
                  if c.get("name") == CONTAINER), "")
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
        return f"image {image} not pulled ({reason}): {message}".rstrip(": ")
    if reason == "CreateContainerConfigError":
        match = re.search(r'(secret|configmap) "([^"]+)" not found', message, re.IGNORECASE)
        if match:
            kind = "Secret" if match.group(1).lower() == "secret" else "ConfigMap"
            return f"{kind} {match.group(2)!r} missing: {message}"
        return f"cannot create the container: {message}"
    for event in reversed(events or []):
        if event.get("reason") in ("FailedMount", "FailedAttachVolume"):
            return f"a volume cannot mount ({event['reason']}): {event.get('message', '')}"
    return ""


# ----------------------------------------------------------------------------- reads


def _try(read, default=None):
    try:
        return read()
    except ClusterError:
        return default


def queue_exists(cluster: Cluster, namespace: str, queue: str) -> bool | None:
    """Whether the LocalQueue exists (False also when Kueue's CRDs are not installed), None
    when the launcher may not read it."""
    try:
        cluster.get_kueue("LocalQueue", namespace, queue)
        return True
    except NotFound:
        return False
    except ClusterError:
        return None


def position(cluster: Cluster, namespace: str, queue: str, workload: dict,
             workloads: list[dict]) -> tuple[int, int] | None:
    """(position, pending count) in the LocalQueue: the visibility API, else Kueue's order."""
    name = workload["metadata"]["name"]
    visible = _try(lambda: cluster.pending_workloads(namespace, queue))
    if visible:
        for item in visible:
            if item["metadata"]["name"] == name:
                return int(item.get("positionInLocalQueue", 0)) + 1, len(visible)
    order = queue_order(workloads, queue)
    names = [w["metadata"]["name"] for w in order]
    return (names.index(name) + 1, len(names)) if name in names else None


def find_workload(cluster: Cluster, job: dict) -> dict | None:
    """The Kueue Workload of a queued Job; None without a queue, a Workload, or the right."""
    if not (job["metadata"].get("labels") or {}).get(QUEUE_LABEL):
        return None
    workloads = _try(lambda: cluster.list_kueue("Workload", job["metadata"].get("namespace", "")))
    return workload_of(workloads, job) if workloads else None


def diagnose(cluster: Cluster, job: dict, pods: list[dict]) -> str:
    """One line on why ``job`` has not started, '' when nothing holds it (or it runs)."""
    namespace = job["metadata"].get("namespace", "")
    queue = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL)
    live = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running", None)]
    if (job.get("spec") or {}).get("suspend") and queue:
        workloads = _try(lambda: cluster.list_kueue("Workload", namespace))
        workload = workload_of(workloads, job) if workloads is not None else None
        exists = None if workload is not None and _true(workload, "QuotaReserved") \
            else queue_exists(cluster, namespace, queue)
        where = position(cluster, namespace, queue, workload, workloads) if workload else None
        return kueue_reason(job, workload, where, exists, readable=workloads is not None)
    pending = [p for p in live if (p.get("status") or {}).get("phase", "Pending") == "Pending"]
    if not pending:
        return ""
    pod = pending[-1]
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            nodes = _try(cluster.nodes)
            return scheduler_words(cond.get("message", ""), pod, nodes)
    events = _try(lambda: cluster.events(namespace, "Pod", pod["metadata"]["name"]), [])
    return kubelet_words(pod, events)
