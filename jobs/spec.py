"""The job spec: one YAML file that describes a training Job (or a scheduled CronJob).

Loaded and validated once, at the edge, into a frozen ``JobSpec``; everything after that
(``render``, ``cluster``) reads it and never checks it again. Every error is one line that
names the key, the bad value and the valid choices, raised as ``SpecError`` (exit code 2).

Each key is stated once, on its dataclass field: its default, its help text (docs/launcher.md)
and its check (``jobs/checks.py``, or a spec-specific one below). ``_build`` applies them; the
few rules that tie keys together (a CronJob's name, deadlines and period; /dev/shm within the
memory) come after, in ``_cross_checks``.

The ``train:`` section is the trainer's own configuration, validated by the trainer's
``load_config`` (no TensorFlow import), so a spec that renders is a spec the trainer accepts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from jobs import checks
from jobs.checks import SpecError, dns_label, parse_quantity, schedule_period_seconds
from trainer.config import TrainConfig, load_config, merge_values, read_yaml
from trainer.errors import ConfigError
from trainer.quoting import brief
from trainer.schema import check_keys, default_of, doc_field, has_default

__all__ = ["JobSpec", "SpecError", "StorageSpec", "Toleration", "config_map_name", "key_docs",
           "load_spec", "parse_spec", "schedule_period_seconds"]

CREDENTIAL_MODES = ("none", "workload-identity", "secret")
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Environment variables the rendered pod sets itself; a spec's env: may not change them.
RESERVED_ENV = ("HOME", "TMPDIR", "MPLCONFIGDIR", "GOOGLE_APPLICATION_CREDENTIALS")
RESERVED_ENV_PREFIX = "KUBETRAIN_"
# Keys that only mean something for a CronJob.
SCHEDULE_ONLY = ("time_zone", "starting_deadline_seconds", "successful_jobs_history_limit",
                 "failed_jobs_history_limit")

MAX_JOB_NAME = 63  # a Job's name becomes the value of its pods' job-name label
MAX_CRONJOB_NAME = 52  # the CronJob controller appends an 11-character suffix to its Jobs
MAX_WORKERS = 256  # TensorFlow's collectives, not Kubernetes, set the practical limit
MIN_MEMORY_BYTES = 2**27  # less is a forgotten suffix ("8" instead of "8Gi")
# Env names that look like credentials: their values would sit in the manifest (readable by
# anyone who can read the Job) and in the CronJob's history; they come from a Secret instead.
_CREDENTIAL_NAME = re.compile(r".*(_KEY|_KEY_ID|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|"
                              r"API_?KEY).*", re.IGNORECASE)
MIN_GRACE_SECONDS = 30  # GKE Spot's preemption notice: less cannot hold a checkpoint upload
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

DAY_SECONDS = 24 * 3600


# ----------------------------------------------------------------------------- spec-specific checks


def _job_name(raw: Any, key: str) -> str | None:
    value = checks.required_string(raw, key)
    return value and dns_label(value, key, MAX_JOB_NAME)  # a CronJob's: see _cross_checks


def _image(raw: Any, key: str) -> str | None:
    image = checks.required_string(raw, key)
    if image is None:
        return None
    unpinned = image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]
    if any(c.isspace() for c in image) or (unpinned and "@sha256:" not in image):
        raise SpecError(f"key {brief(key)}: {brief(image)} must be pinned to a tag (not :latest) or a digest")
    return image


def _train(raw: Any, key: str) -> TrainConfig | None:
    values = checks.mapping(raw, key)
    try:
        cfg = None if values is None else load_config(values)
    except ConfigError as exc:
        raise SpecError(f"{key}: {exc}") from None
    for name in ("data", "output"):
        value = getattr(cfg, name, "")
        # They become the container's arguments: a leading '-' would be read as a flag, and the
        # kubelet expands $(VAR) in arguments.
        if value.startswith("-") or "$(" in value:
            raise SpecError(f"key '{key}.{name}': {brief(value)} may not start with '-' or "
                            "contain '$(' (it becomes a container argument)")
    return cfg


def _workers(raw: Any, key: str) -> int:
    value = checks.whole_number(raw, key)
    if not 1 <= value <= MAX_WORKERS:
        raise SpecError(f"key {key!r}: must be between 1 and {MAX_WORKERS}, got {value}")
    return value


def _memory(raw: Any, key: str) -> str:
    memory = checks.quantity(raw, key)
    if parse_quantity(memory, key) < MIN_MEMORY_BYTES:
        raise SpecError(f"key {brief(key)}: {brief(memory)} is too small; use a suffix, e.g. 8Gi")
    return memory


def _shm_size(raw: Any, key: str) -> str:
    return "auto" if raw == "auto" else checks.quantity(raw, key)


def _env(raw: Any, key: str) -> dict[str, str]:
    out = {}
    for name, value in (checks.mapping(raw, key) or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SpecError(f"key {brief(key)}: {brief(name)} is not a valid environment variable name")
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(f"key '{key}.{name}': set by kubetrain itself; "
                            f"reserved: {', '.join(RESERVED_ENV)}, {RESERVED_ENV_PREFIX}*")
        if _CREDENTIAL_NAME.fullmatch(name) and name != "STORAGE_EMULATOR_HOST":
            raise SpecError(
                f"key '{key}.{name}': looks like a credential; a value here would be written into "
                f"the manifest: put it in a Secret and use env_from_secret: {{{name}: SECRET/KEY}}")
        if isinstance(value, (dict, list)) or value is None:
            raise SpecError(f"key '{key}.{name}': expected a string, got {brief(value)}")
        out[name] = value if isinstance(value, str) else yaml.safe_dump(value).strip().removesuffix("...").strip()
    return out


def _env_from_secret(raw: Any, key: str) -> dict[str, tuple[str, str]]:
    """``{NAME: "secret-name/key"}``: env variables filled from Secrets by the kubelet."""
    out = {}
    for name, ref in (checks.mapping(raw, key) or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SpecError(f"key {brief(key)}: {brief(name)} is not a valid environment variable name")
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(f"key '{key}.{name}': set by kubetrain itself")
        secret, sep, secret_key = ref.partition("/") if isinstance(ref, str) else ("", "", "")
        if not sep or not re.fullmatch(r"[-._A-Za-z0-9]+", secret_key):
            raise SpecError(f"key '{key}.{name}': expected SECRET/KEY (a Secret's name and a key "
                            f"in it), got {brief(ref)}")
        dns_label(secret, f"{key}.{name}", 253)
        out[name] = (secret, secret_key)
    return out


def _tolerations(raw: Any, key: str) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(f"key {brief(key)}: expected a list, got {brief(raw)}")
    return tuple(_toleration(item, f"{key}[{i}]") for i, item in enumerate(raw))


def _toleration(item: Any, where: str) -> Toleration:
    if not isinstance(item, Mapping):
        valid = ", ".join(f.name for f in fields(Toleration))
        raise SpecError(f"key {brief(where)}: expected a mapping with keys {valid}")
    tol = _build(Toleration, item, where + ".")
    if tol.operator == "Exists" and tol.value:
        raise SpecError(f"key '{where}.value': must be empty when operator is Exists")
    if tol.toleration_seconds is not None and tol.effect != "NoExecute":
        raise SpecError(f"key '{where}.toleration_seconds': only valid with effect NoExecute")
    if not tol.key and tol.operator != "Exists":
        raise SpecError(f"key '{where}.key': an empty key needs operator Exists")
    return tol


def _storage(raw: Any, key: str) -> StorageSpec | None:
    values = checks.mapping(raw, key)
    if values is None:
        return None
    storage = _build(StorageSpec, values, key + ".")
    if storage.credentials != "secret":
        if storage.secret:
            raise SpecError(f"key '{key}.secret': only used with credentials=secret "
                            f"(it is {brief(storage.credentials)})")
        return storage
    if not storage.secret:
        raise SpecError(f"key '{key}.secret': credentials=secret needs the Secret's name")
    dns_label(storage.secret, f"{key}.secret", 253)
    if not re.fullmatch(r"[-._A-Za-z0-9]+", storage.secret_key):
        raise SpecError(f"key '{key}.secret_key': {brief(storage.secret_key)} is not a valid Secret key")
    return storage


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Toleration:
    key: str = doc_field("", "taint key; empty with operator Exists = every taint", check=checks.string)
    operator: str = doc_field("Equal", "how key and value match", TOLERATION_OPERATORS,
                              check=checks.choice(TOLERATION_OPERATORS))
    value: str = doc_field("", "taint value (empty with Exists)", check=checks.scalar_string)
    effect: str = doc_field("", "taint effect; empty = every effect", TAINT_EFFECTS,
                            check=checks.choice(TAINT_EFFECTS, allow_empty=True))
    toleration_seconds: int | None = doc_field(None, "NoExecute only: how long the pod stays bound",
                                               check=checks.optional_whole_number)


@dataclass(frozen=True)
class StorageSpec:
    credentials: str = doc_field("none", "how the pod authenticates to object storage", CREDENTIAL_MODES,
                                 check=checks.choice(CREDENTIAL_MODES))
    secret: str = doc_field("", "credentials=secret: name of the Secret holding the key file",
                            check=checks.string)
    secret_key: str = doc_field("key.json", "credentials=secret: the key file's name inside the Secret",
                                check=checks.string)


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. Built only by ``load_spec``/``parse_spec``; never mutated."""

    name: str = doc_field(
        help="Job (or CronJob) name: lowercase letters, digits and '-'", check=_job_name)
    image: str = doc_field(
        help="trainer image reference, pinned to a tag (not :latest) or a digest", check=_image)
    train: TrainConfig = doc_field(
        help="the trainer's settings (data, output, epochs, model, ...): see the trainer's config",
        check=_train)
    gpus: int = doc_field(
        0, "GPUs per pod (nvidia.com/gpu); 0 trains on CPU", check=checks.whole_number)
    workers: int = doc_field(
        1, "pods that train one model in sync (MultiWorkerMirroredStrategy); 1 = one pod, more = an "
        "Indexed Job of that many pods and a headless Service", check=_workers)
    cpu: str = doc_field(
        "2", "CPU cores per pod (request = limit), e.g. 4 or 500m", check=checks.quantity)
    memory: str = doc_field(
        "8Gi", "memory per pod (request = limit), e.g. 16Gi", check=_memory)
    shm_size: str = doc_field(
        "auto", "size of /dev/shm (memory-backed, counts against memory); auto = 1Gi per GPU, "
        "at least 1Gi", check=_shm_size)
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
        "toleration_seconds", check=_tolerations)
    queue: str = doc_field(
        "", "Kueue LocalQueue (label kueue.x-k8s.io/queue-name); the Job is created suspended",
        check=checks.dns_name(63))
    priority_class: str = doc_field(
        "", "PriorityClass of the pods", check=checks.dns_name(253))
    service_account: str = doc_field(
        "kubetrain-trainer", "ServiceAccount of the pods (k8s/base makes kubetrain-trainer)",
        check=checks.dns_name(253, allow_empty=False))
    image_pull_policy: str = doc_field(
        "IfNotPresent", "when the kubelet pulls the image", PULL_POLICIES,
        check=checks.choice(PULL_POLICIES))
    storage: StorageSpec = doc_field(
        StorageSpec, "object-storage credentials: credentials, secret, secret_key", check=_storage)
    env: dict = doc_field(
        dict, "extra environment variables, e.g. STORAGE_EMULATOR_HOST (no credentials: names "
        "like *_KEY, *SECRET*, *TOKEN*, *PASSWORD* are refused)", check=_env)
    env_from_secret: dict = doc_field(
        dict, "environment variables read from Secrets: NAME: SECRET/KEY (nothing secret in the "
        "manifest)", check=_env_from_secret)

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


def _build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """``cls`` from ``values``: unknown keys rejected, each given key checked by its field's
    check, every other key (or one left empty) at its field's default."""
    check_keys(values, [f.name for f in fields(cls)], where, error=SpecError)
    kwargs = {}
    for f in fields(cls):
        key = where + f.name
        value = f.metadata["check"](values[f.name], key) if f.name in values else None
        if value is None and not has_default(f):
            raise SpecError(f"missing required key {brief(key)} ({f.metadata['help']})")
        kwargs[f.name] = default_of(f) if value is None else value
    return cls(**kwargs)


def _cross_checks(spec: JobSpec, given: set[str]) -> JobSpec:
    """The rules that tie keys together; fills shm_size and the deadlines left at auto (0)."""
    shm_size = f"{max(1, spec.gpus)}Gi" if spec.shm_size == "auto" else spec.shm_size
    if parse_quantity(shm_size, "shm_size") >= parse_quantity(spec.memory, "memory"):
        raise SpecError(f"key 'shm_size': {shm_size} must be smaller than 'memory' ({spec.memory}): "
                        "/dev/shm is memory-backed and counts against the pod's memory limit")
    spec = dataclasses.replace(spec, shm_size=shm_size)
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
    if spec.train.cpu_replicas > 1 or spec.train.strategy == "one_device":
        raise SpecError("train: with workers > 1 every GPU of each pod is a replica (one CPU device "
                        "without GPUs): leave strategy at auto/mirrored and cpu_replicas at 0 or 1")


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
        return _cross_checks(_build(JobSpec, values), set(values))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load_spec(path: str | Path, train_overrides: Mapping[str, Any] | None = None,
              spec_overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Read and validate a spec file; SpecError (one line, naming the file) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from None
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
