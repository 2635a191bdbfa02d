"""Pure functions from a validated ``JobSpec`` to Kubernetes manifests (plain dicts).

Nothing here talks to a cluster: ``python -m jobs render`` prints what ``submit`` would send,
and the golden tests in ``tests/golden/`` pin every field. One spec renders to

* a ConfigMap carrying the trainer's resolved config (mounted at ``/etc/kubetrain``), and
* a batch/v1 Job, or, when the spec has a ``schedule``, a batch/v1 CronJob whose runs each
  write to their own output directory ``<train.output>/<job name>``;
* with ``workers: N`` > 1, an Indexed Job of N pods and the headless Service that names them
  (``jobs/workers.py``).

How the trainer's exit codes become the Job's ``podFailurePolicy``, generated from the
``job_action`` column of the exit-code table in ``trainer/core/errors.py``:

    exit 2 (config), 3 (data)         FailJob   never retried: retrying cannot help
    exit 143 (SIGTERM, checkpointed)  Ignore    retried without spending backoffLimit
    DisruptionTarget (preempted,      Ignore    retried without spending backoffLimit
      evicted, node drained)
    exit 1 and anything else          Count     retried up to backoffLimit
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import yaml

from jobs import __version__, workers
from jobs.spec import JobSpec
from trainer.core.contract import GRACE_ENV, JOB_NAME_ENV, JOB_NAME_VAR, SCRATCH_DIR, SCRATCH_ENV
from trainer.core.errors import FAIL_JOB, IGNORE, codes_with_action

TOOL = "kubetrain"
CONTAINER = "trainer"
CONFIG_DIR = "/etc/kubetrain"
CONFIG_FILE = "config.yaml"
CREDENTIALS_DIR = "/var/secrets/google"
RUN_AS = 10001  # the image's non-root user (docker/Dockerfile); above 10000, outside host ranges
GPU_RESOURCE = "nvidia.com/gpu"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
QUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on every pod by the Job controller (>= 1.27)
DOMAIN = "kubetrain.dev"  # prefix of kubetrain's own annotations
SPEC_HASH_ANNOTATION = f"{DOMAIN}/spec-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": TOOL}
# GKE schedules pods that use Workload Identity only on nodes running the metadata server.
WORKLOAD_IDENTITY_NODE_SELECTOR = {"iam.gke.io/gke-metadata-server-enabled": "true"}


def labels(spec: JobSpec) -> dict[str, str]:
    """The app.kubernetes.io labels of every object made from ``spec``."""
    return {
        "app.kubernetes.io/name": TOOL,
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": CONTAINER,
        "app.kubernetes.io/part-of": TOOL,
        "app.kubernetes.io/version": __version__,  # the launcher that rendered it
        **MANAGED_BY,
    }


def _metadata(spec: JobSpec, name: str, namespace: str, extra_labels: dict | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**labels(spec), **(extra_labels or {})}
    return meta


def config_map(spec: JobSpec, namespace: str = "") -> dict:
    """The trainer's resolved config, read by the container with ``--config``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, spec.config_map_name, namespace),
        "data": {CONFIG_FILE: spec.train.to_yaml()},
    }


def _exit_code_rule(action: str) -> dict:
    values = codes_with_action(action)
    return {"action": action, "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": values}}


def pod_failure_policy() -> dict:
    """The trainer's exit codes as Job rules (see the module docstring)."""
    return {
        "rules": [
            *(_exit_code_rule(action) for action in (FAIL_JOB, IGNORE)),
            {"action": IGNORE,
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _args(spec: JobSpec) -> list[str]:
    output = spec.train.output.rstrip("/") or spec.train.output
    if spec.scheduled:
        # Every Job the CronJob creates has a unique name; the kubelet expands $(VAR) in args.
        output = f"{output}/{JOB_NAME_VAR}"
    return ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--data", spec.train.data, "--output", output]


def _env(spec: JobSpec) -> list[dict]:
    env: list[dict] = [
        {"name": SCRATCH_ENV, "value": SCRATCH_DIR},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH_DIR}/.matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The trainer warns when a checkpoint takes longer than this (trainer/core/preemption.py).
        {"name": GRACE_ENV, "value": str(spec.termination_grace_period_seconds)},
    ]
    if spec.scheduled:
        env.append({"name": JOB_NAME_ENV,
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}}})
    if spec.storage.credentials == "secret":
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                    "value": f"{CREDENTIALS_DIR}/{spec.storage.secret_key}"})
    env.extend({"name": k, "value": v} for k, v in sorted(spec.env.items()))
    env.extend({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
               for k, (secret, key) in sorted(spec.env_from_secret.items()))
    return env


def _resources(spec: JobSpec) -> dict:
    # Limits equal requests: the pod gets the Guaranteed QoS class, the last to be evicted.
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(requests)
    # The scheduler only places the pod on a node with this much local disk free for /scratch,
    # instead of the kubelet evicting it later when the disk fills (no limit: the emptyDir's
    # sizeLimit bounds /scratch; logs and the read-only root add little).
    requests["ephemeral-storage"] = spec.scratch_size
    if spec.gpus:
        # A quantity is a string in the API (the Python client rejects a bare int).
        limits[GPU_RESOURCE] = str(spec.gpus)
    return {"requests": requests, "limits": limits}


def _volumes(spec: JobSpec) -> tuple[list[dict], list[dict]]:
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes = [
        {"name": "config", "configMap": {"name": spec.config_map_name,
                                         "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]}},
        # The root filesystem is read-only: the dataset cache, gs:// staging, HOME and TMPDIR
        # live here.
        {"name": "scratch", "emptyDir": {"sizeLimit": spec.scratch_size}},
        # tf.data workers and NCCL use shared memory; the runtime's default /dev/shm is 64Mi.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
    ]
    if spec.storage.credentials == "secret":
        mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
        volumes.append({"name": "credentials",
                        "secret": {"secretName": spec.storage.secret, "defaultMode": 0o440}})
    return mounts, volumes


def pod_spec(spec: JobSpec) -> dict:
    mounts, volumes = _volumes(spec)
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python", "-m", "trainer"],
        "args": _args(spec),
        "env": _env(spec),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        # A crash's last log lines land in the pod status, where `jobs wait` shows them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    node_selector = dict(spec.node_selector)
    if spec.storage.credentials == "workload-identity":
        node_selector.update(WORKLOAD_IDENTITY_NODE_SELECTOR)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are new pods, counted by the Job's podFailurePolicy
        "serviceAccountName": spec.service_account,
        # The trainer never calls the Kubernetes API (Workload Identity needs no token either).
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    if node_selector:
        pod["nodeSelector"] = node_selector
    if spec.tolerations:
        pod["tolerations"] = [_toleration(t) for t in spec.tolerations]
    return pod


def _toleration(t: Any) -> dict:
    out: dict[str, Any] = {}
    if t.key:
        out["key"] = t.key
    out["operator"] = t.operator
    if t.value:
        out["value"] = t.value
    if t.effect:
        out["effect"] = t.effect
    if t.toleration_seconds is not None:
        out["tolerationSeconds"] = t.toleration_seconds
    return out


def job_spec(spec: JobSpec) -> dict:
    """The ``spec`` of a batch/v1 Job (also the CronJob's ``jobTemplate.spec``)."""
    out: dict[str, Any] = {}
    if spec.queue:
        out["suspend"] = True  # Kueue admits the Job by un-suspending it
    out.update({
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        # A replacement pod starts only once the old one has terminated, so two trainers never
        # write the same checkpoint directory at once (required with podFailurePolicy).
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            "metadata": {"labels": labels(spec)},
            "spec": pod_spec(spec),
        },
    })
    return out


def _queue_labels(spec: JobSpec) -> dict:
    """Kueue's labels: the LocalQueue, and the WorkloadPriorityClass when one is named."""
    if not spec.queue:
        return {}
    out = {QUEUE_LABEL: spec.queue}
    if spec.queue_priority:
        out[QUEUE_PRIORITY_LABEL] = spec.queue_priority
    return out


def job(spec: JobSpec, namespace: str = "") -> dict:
    queue = _queue_labels(spec)
    out = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec, spec.name, namespace, queue),
        "spec": job_spec(spec),
    }
    if spec.workers > 1:
        out["spec"] = workers.indexed(out["spec"], spec.name, spec.workers)
    return out


def service(spec: JobSpec, namespace: str = "") -> dict:
    """The headless Service of a multi-worker Job (``workers`` > 1)."""
    name = workers.service_name(spec.name)
    return workers.service(spec.name, JOB_NAME_LABEL, _metadata(spec, name, namespace))


def cron_job(spec: JobSpec, namespace: str = "") -> dict:
    queue = _queue_labels(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(spec, spec.name, namespace),
        "spec": {
            "schedule": spec.schedule,
            "timeZone": spec.time_zone,
            "concurrencyPolicy": "Forbid",  # a nightly run never overlaps the previous one
            "startingDeadlineSeconds": spec.starting_deadline_seconds,
            "successfulJobsHistoryLimit": spec.successful_jobs_history_limit,
            "failedJobsHistoryLimit": spec.failed_jobs_history_limit,
            "jobTemplate": {
                "metadata": {"labels": {**labels(spec), **queue}},
                "spec": job_spec(spec),
            },
        },
    }


def spec_hash(manifests: list[dict]) -> str:
    """A short digest of what would be submitted, to tell a resubmission from a change."""
    stripped = copy.deepcopy(manifests)
    for m in stripped:
        m.get("metadata", {}).get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
        m.get("metadata", {}).pop("namespace", None)
    blob = json.dumps(stripped, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def render(spec: JobSpec, namespace: str = "") -> list[dict]:
    """All manifests for ``spec``: [ConfigMap, Job] or [ConfigMap, CronJob]; with ``workers`` > 1
    [ConfigMap, Job, Service].

    ``namespace`` (else the spec's) is written into each object; with neither, objects carry no
    namespace and land in kubectl's current one.
    """
    ns = namespace or spec.namespace
    workload = cron_job(spec, ns) if spec.scheduled else job(spec, ns)
    manifests = [config_map(spec, ns), workload]
    if spec.workers > 1:
        manifests.append(service(spec, ns))
    workload["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(manifests)}
    return manifests


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(manifests: list[dict]) -> str:
    """kubectl-ready multi-document YAML."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, explicit_start=True,
                         default_flow_style=False, width=100)
