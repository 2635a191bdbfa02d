"""The job spec: one YAML file that describes a training Job (or a scheduled CronJob).

Loaded and validated once, at the edge, into a frozen ``JobSpec``; everything after that
(``render``, ``cluster``) reads it and never checks it again. Every error is one line that
names the key, the bad value and the valid choices, raised as ``SpecError`` (exit code 2).

Each key is stated once, on its dataclass field: its default, its help text (docs/launcher.md)
and its check (``jobs/checks.py``, or a spec-specific one in ``jobs/spec_values.py``, which also
holds the nested values: tolerations, storage credentials). ``checks.build`` applies them; the
few rules that tie keys together (a CronJob's name, deadlines and period; /dev/shm within the
memory) come after, in ``_cross_checks``.

The ``train:`` section is the trainer's own configuration, validated by the trainer's
``load_config`` (no TensorFlow import), so a spec that renders is a spec the trainer accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jobs import checks
from jobs import spec_values as values
from jobs.checks import SpecError, dns_label, parse_quantity, schedule_period_seconds
from jobs.spec_values import MAX_JOB_NAME, StorageSpec, Toleration
from trainer.config import TrainConfig, merge_values, multi_worker_problem, read_yaml
from trainer.core.errors import ConfigError
from trainer.core.quoting import brief
from trainer.core.schema import default_of, doc_field

__all__ = ["JobSpec", "SpecError", "StorageSpec", "Toleration", "config_map_name", "key_docs",
           "load_spec", "parse_spec", "schedule_period_seconds"]

PULL_POLICIES = ("IfNotPresent", "Always", "Never")
# Keys that only mean something for a CronJob.
SCHEDULE_ONLY = ("time_zone", "starting_deadline_seconds", "successful_jobs_history_limit",
                 "failed_jobs_history_limit")
MAX_CRONJOB_NAME = 52  # the CronJob controller appends an 11-character suffix to its Jobs
MIN_GRACE_SECONDS = 30  # GKE Spot's preemption notice: less cannot hold a checkpoint upload
DAY_SECONDS = 24 * 3600
MAX_SPEC_FILE_BYTES = 1 << 20  # a spec is a screenful of keys; anything bigger is a mistake


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. Built only by ``load_spec``/``parse_spec``; never mutated."""

    name: str = doc_field(
        help="Job (or CronJob) name: lowercase letters, digits and '-'", check=values.job_name)
    image: str = doc_field(
        help="trainer image reference, pinned to a tag (not :latest) or a digest", check=values.image)
    train: TrainConfig = doc_field(
        help="the trainer's settings (data, output, epochs, model, ...): see the trainer's config",
        check=values.train)
    gpus: int = doc_field(
        0, "GPUs per pod (nvidia.com/gpu); 0 trains on CPU", check=checks.whole_number)
    workers: int = doc_field(
        1, "pods that train one model in sync (MultiWorkerMirroredStrategy); 1 = one pod, more = an "
        "Indexed Job of that many pods and a headless Service", check=values.workers)
    cpu: str = doc_field(
        "2", "CPU cores per pod (request = limit), e.g. 4 or 500m", check=checks.quantity)
    memory: str = doc_field(
        "8Gi", "memory per pod (request = limit), e.g. 16Gi", check=values.memory)
    shm_size: str = doc_field(
        "auto", "size of /dev/shm (memory-backed, counts against memory); auto = 1Gi per GPU, "
        "at least 1Gi", check=values.shm_size)
    scratch_size: str = doc_field(
        "20Gi", "size of the writable /scratch volume, requested as ephemeral-storage (dataset "
        "cache: a class-folder dataset whole, a packed one only its shard window; upload staging, "
        "HOME, TMPDIR)", check=checks.quantity)
    namespace: str = doc_field(
        "", "namespace; default: -n, else the kubeconfig context's namespace",
        check=checks.dns_name(63))
    schedule: str = doc_field(
        "", "cron schedule (5 fields, or @daily, @hourly...); when set, a CronJob is rendered",
        check=checks.schedule)
    time_zone: str = doc_field(
        "Etc/UTC", "IANA time zone of the schedule (schedule only)", check=checks.time_zone)
    starting_deadline_seconds: int = doc_field(
        0, "skip a run not started within this (schedule only); 0 = a tenth of the period, "
        "at most 1h", check=checks.whole_number)
    successful_jobs_history_limit: int = doc_field(
        3, "finished runs kept (schedule only)", check=checks.whole_number)
    failed_jobs_history_limit: int = doc_field(
        3, "failed runs kept, with their pods' logs (schedule only)", check=checks.whole_number)
    active_deadline_seconds: int = doc_field(
        0, "the Job fails after running this long; 0 = 1 day, or with a schedule the period minus "
        "starting_deadline_seconds (at most 1 day); must be shorter than the period",
        check=checks.whole_number)
    backoff_limit: int = doc_field(
        3, "retries after unexpected failures (exit 1); preemption does not count",
        check=checks.whole_number)
    ttl_seconds_after_finished: int = doc_field(
        7 * DAY_SECONDS, "a finished Job and its pods (and logs) are deleted after this",
        check=checks.whole_number)
    termination_grace_period_seconds: int = doc_field(
        120, "time between SIGTERM and SIGKILL, for the trainer's checkpoint",
        check=checks.whole_number)
    node_selector: dict = doc_field(
        dict, "node labels the pod must match", check=checks.labels)
    tolerations: tuple = doc_field(
        (), "taints the pod tolerates: list of key, operator (Equal, Exists), value, effect, "
        "toleration_seconds", check=values.tolerations)
    queue: str = doc_field(
        "", "Kueue LocalQueue (label kueue.x-k8s.io/queue-name); the Job is created suspended",
        check=checks.dns_name(63))
    queue_priority: str = doc_field(
        "", "Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class): a higher one "
        "preempts lower ones in the ClusterQueue; needs 'queue'", check=checks.dns_name(253))
    priority_class: str = doc_field(
        "", "PriorityClass of the pods", check=checks.dns_name(253))
    service_account: str = doc_field(
        "kubetrain-trainer", "ServiceAccount of the pods (k8s/base makes kubetrain-trainer)",
        check=checks.dns_name(253, allow_empty=False))
    image_pull_policy: str = doc_field(
        "IfNotPresent", "when the kubelet pulls the image", PULL_POLICIES,
        check=checks.choice(PULL_POLICIES))
    storage: StorageSpec = doc_field(
        StorageSpec, "object-storage credentials: credentials, secret, secret_key", check=values.storage)
    env: dict = doc_field(
        dict, "extra environment variables, e.g. STORAGE_EMULATOR_HOST (no credentials: names "
        "like *_KEY, *SECRET*, *TOKEN*, *PASSWORD* are refused)", check=values.env)
    env_from_secret: dict = doc_field(
        dict, "environment variables read from Secrets: NAME: SECRET/KEY (nothing secret in the "
        "manifest)", check=values.env_from_secret)

    @property
    def scheduled(self) -> bool:
        return bool(self.schedule)

    @property
    def config_map_name(self) -> str:
        return config_map_name(self.name)


def config_map_name(job_name: str) -> str:
    """The ConfigMap that carries the trainer config of the Job or CronJob ``job_name``."""
    return f"{job_name}-config"


# ----------------------------------------------------------------------------- loading


def _cross_checks(spec: JobSpec, given: set[str]) -> JobSpec:
    """The rules that tie keys together; fills shm_size and the deadlines left at auto (0)."""
    shm_size = f"{max(1, spec.gpus)}Gi" if spec.shm_size == "auto" else spec.shm_size
    if parse_quantity(shm_size, "shm_size") >= parse_quantity(spec.memory, "memory"):
        raise SpecError(f"key 'shm_size': {shm_size} must be smaller than 'memory' ({spec.memory}): "
                        "/dev/shm is memory-backed and counts against the pod's memory limit")
    spec = dataclasses.replace(spec, shm_size=shm_size)
    for name in sorted(set(spec.env) & set(spec.env_from_secret)):
        raise SpecError(f"key 'env_from_secret.{name}': {name} is also set in 'env'; a variable "
                        "is set once: keep one of the two")
    if spec.queue_priority and not spec.queue:
        raise SpecError("key 'queue_priority': only used with a 'queue' (Kueue admits by priority "
                        "within a ClusterQueue)")
    if spec.workers > 1:
        _check_multi_worker(spec)
    if not spec.schedule:
        for key in SCHEDULE_ONLY:
            if key in given:
                raise SpecError(f"key {brief(key)}: only used with a 'schedule'")
        return dataclasses.replace(spec, active_deadline_seconds=spec.active_deadline_seconds or DAY_SECONDS)
    dns_label(spec.name, "name", MAX_CRONJOB_NAME)
    period = schedule_period_seconds(spec.schedule, spec.time_zone)
    starting = spec.starting_deadline_seconds or min(3600, max(10, period // 10))
    if starting >= period:
        raise SpecError(f"key 'starting_deadline_seconds': {starting} must be shorter than the "
                        f"schedule's period ({period} s)")
    deadline = spec.active_deadline_seconds or min(DAY_SECONDS, period - starting)
    if deadline >= period:
        raise SpecError(f"key 'active_deadline_seconds': {deadline} must be shorter than the "
                        f"schedule's period ({period} s), so runs never overlap or pile up")
    return dataclasses.replace(spec, starting_deadline_seconds=starting, active_deadline_seconds=deadline)


def _check_multi_worker(spec: JobSpec) -> None:
    """``workers`` > 1: names that become DNS labels, and what a multi-worker run cannot do."""
    if spec.schedule:
        raise SpecError("key 'workers': a scheduled (CronJob) spec trains on one pod for now; "
                        "remove 'schedule' or set workers: 1")
    if not spec.name[0].isalpha():
        raise SpecError(f"key 'name': {spec.name!r} names the workers' Service too, so it must start "
                        "with a letter when workers > 1")
    hostname = f"{spec.name}-{spec.workers - 1}"
    if len(hostname) > MAX_JOB_NAME:
        raise SpecError(f"key 'name': the last worker's hostname {hostname!r} is longer than "
                        f"{MAX_JOB_NAME} characters; shorten 'name'")
    problem = multi_worker_problem(spec.train)
    if problem:
        raise SpecError(f"train: {problem}")


def warnings(spec: JobSpec) -> list[str]:
    """Legal but risky settings, printed by ``render`` and ``submit`` (one line each)."""
    out = []
    if spec.termination_grace_period_seconds < MIN_GRACE_SECONDS:
        out.append(f"termination_grace_period_seconds is {spec.termination_grace_period_seconds}: "
                   f"under {MIN_GRACE_SECONDS} s (GKE Spot's notice) a preempted pod may be killed "
                   "before its checkpoint is uploaded")
    return out


def parse_spec(values: Mapping[str, Any], source: str = "spec",
               train_overrides: Mapping[str, Any] | None = None,
               spec_overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Validate a spec mapping (as read from YAML) into a frozen JobSpec, or raise SpecError.
    ``spec_overrides`` (top-level keys, e.g. ``{"gpus": 2}``) and ``train_overrides`` (keys of
    ``train:``) are laid over it first (``--set``)."""
    try:
        if not isinstance(values, Mapping):
            raise SpecError("expected a mapping of spec keys at the top level")
        if spec_overrides:
            values = merge_values(values, spec_overrides)
        if train_overrides and isinstance(values.get("train"), Mapping):
            values = {**values, "train": merge_values(values["train"], train_overrides)}
        return _cross_checks(checks.build(JobSpec, values), set(values))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load_spec(path: str | Path, train_overrides: Mapping[str, Any] | None = None,
              spec_overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Read and validate a spec file; SpecError (one line, naming the file) on any problem."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise SpecError(f"{path}: cannot read the spec: larger than {MAX_SPEC_FILE_BYTES >> 20} "
                            "MiB; is it the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: cannot read the spec: not UTF-8 text (bad byte at offset "
                        f"{exc.start}); save it as UTF-8") from None
    try:
        values = read_yaml(text, str(path))
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(values, str(path), train_overrides, spec_overrides)


def key_docs() -> list[tuple[str, str, Any, tuple[str, ...] | None]]:
    """(key, help, default, choices) for every spec key, for the docs."""
    rows = []
    for f in fields(JobSpec):
        if f.name == "storage":
            for sub in fields(StorageSpec):
                rows.append((f"storage.{sub.name}", sub.metadata["help"], sub.default, sub.metadata["choices"]))
            continue
        rows.append((f.name, f.metadata["help"], default_of(f), f.metadata["choices"]))
    return rows
