"""Multi-worker Jobs (``workers: N`` > 1): a headless Service and an Indexed Job.

Pure builders, used by ``jobs/render.py``. What N workers need from Kubernetes:

* **Stable names.** An Indexed Job (``completionMode: Indexed``, ``completions = parallelism =
  N``) gives pod *i* the hostname ``<job>-<i>`` and, through ``subdomain``, the DNS name
  ``<job>-<i>.<service>`` of a headless Service (``clusterIP: None``) that selects the Job's
  pods. A re-created pod keeps its index, so it keeps its name: the address list never changes.
* **The address list.** Rendered into ``KUBETRAIN_WORKERS`` (``<job>-0.<job>:2222,...``); the
  Job controller sets ``JOB_COMPLETION_INDEX`` in each pod; the trainer turns both into the
  standard ``TF_CONFIG`` (``trainer/runtime/multiworker.py``).
* **All of them, together.** Kueue admits the Job as one unit (N pods' requests at once), so
  with a ``queue`` the workers start together or not at all.
* **Failure semantics.** Every failure code keeps its Job action (``podFailurePolicy``); a
  worker that loses a peer exits 75, which is ``Ignore`` like preemption, so all pods are
  re-created without spending ``backoffLimit`` and resume from worker 0's checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

from trainer.core.contract import WORKERS_ENV

COLLECTIVE_PORT = 2222  # TensorFlow's conventional gRPC port for a worker
PORT_NAME = "collective"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def service_name(job_name: str) -> str:
    """The headless Service (and the pods' ``subdomain``): named after the Job."""
    return job_name


def addresses(job_name: str, workers: int) -> list[str]:
    """``host:port`` of every worker, index order: the pods' stable DNS names."""
    return [f"{job_name}-{i}.{service_name(job_name)}:{COLLECTIVE_PORT}" for i in range(workers)]


def service(job_name: str, job_name_label: str, metadata: dict) -> dict:
    """The headless Service that gives each worker pod its DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",  # headless: DNS records per pod, no virtual IP
            # Names resolve as soon as a pod has an IP, not when it is Ready: the workers look
            # each other up while starting, and they have no readiness probe.
            "publishNotReadyAddresses": True,
            "selector": {job_name_label: job_name},
            "ports": [{"name": PORT_NAME, "port": COLLECTIVE_PORT, "targetPort": COLLECTIVE_PORT,
                       "protocol": "TCP"}],
        },
    }


def indexed(job_spec: dict[str, Any], job_name: str, workers: int) -> dict[str, Any]:
    """The N-worker Indexed Job's ``spec``, made from a single-pod Job's (left unchanged)."""
    out: dict[str, Any] = {}
    for key, value in job_spec.items():  # next to backoffLimit, where a reader looks for the pod counts
        out[key] = value
        if key == "backoffLimit":
            out.update(completionMode="Indexed", completions=workers, parallelism=workers)
    out["template"] = copy.deepcopy(job_spec["template"])
    pod = out["template"]["spec"]
    pod["subdomain"] = service_name(job_name)
    container = pod["containers"][0]
    container["env"].append({"name": WORKERS_ENV, "value": ",".join(addresses(job_name, workers))})
    container["ports"] = [{"name": PORT_NAME, "containerPort": COLLECTIVE_PORT, "protocol": "TCP"}]
    return out
