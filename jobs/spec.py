"""The job spec: one YAML file that describes a training Job (or a scheduled CronJob).

Loaded and validated once, at the edge, into a frozen ``JobSpec``; everything after that
(``render``, ``cluster``) reads it and never checks it again. Every error is one line that
names the key, the bad value and the valid choices, raised as ``SpecError`` (exit code 2).

The ``train:`` section is the trainer's own configuration, validated by the trainer's
``load_config`` (no TensorFlow import), so a spec that renders is a spec the trainer accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter

from trainer.config import TrainConfig, load_config, read_yaml
from trainer.errors import ConfigError

CREDENTIAL_MODES = ("none", "workload-identity", "secret")
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The macros Kubernetes' CronJob accepts besides the 5-field syntax (@reboot is not one).
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Environment variables the rendered pod sets itself; a spec's env: may not change them.
RESERVED_ENV = ("HOME", "TMPDIR", "MPLCONFIGDIR", "GOOGLE_APPLICATION_CREDENTIALS")
RESERVED_ENV_PREFIX = "KUBETRAIN_"

MAX_JOB_NAME = 63  # a Job's name becomes the value of its pods' job-name label
MAX_CRONJOB_NAME = 52  # the CronJob controller appends an 11-character suffix to its Jobs
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

DAY_SECONDS = 24 * 3600


class SpecError(Exception):
    """The job spec is wrong; the message is one line naming the key and what is valid."""


def _doc(help: str, choices: tuple[str, ...] | None = None) -> dict:
    """A spec field's metadata: its help text and choices (used in errors and docs/launcher.md)."""
    return {"help": help, "choices": choices}


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None


@dataclass(frozen=True)
class StorageSpec:
    credentials: str = field(default="none", metadata=_doc(
        "how the pod authenticates to object storage", CREDENTIAL_MODES))
    secret: str = field(default="", metadata=_doc(
        "credentials=secret: name of the Secret holding the key file"))
    secret_key: str = field(default="key.json", metadata=_doc(
        "credentials=secret: the key file's name inside the Secret"))


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. Built only by ``load_spec``/``parse_spec``; never mutated."""

    name: str = field(metadata=_doc(
        "Job (or CronJob) name: lowercase letters, digits and '-'"))
    image: str = field(metadata=_doc(
        "trainer image reference, pinned to a tag (not :latest) or a digest"))
    train: TrainConfig = field(metadata=_doc(
        "the trainer's settings (data, output, epochs, model, ...): see the trainer's config"))
    gpus: int = field(default=0, metadata=_doc(
        "GPUs per pod (nvidia.com/gpu); 0 trains on CPU"))
    cpu: str = field(default="2", metadata=_doc(
        "CPU cores per pod (request = limit), e.g. 4 or 500m"))
    memory: str = field(default="8Gi", metadata=_doc(
        "memory per pod (request = limit), e.g. 16Gi"))
    shm_size: str = field(default="auto", metadata=_doc(
        "size of /dev/shm (memory-backed, counts against memory); auto = 1Gi per GPU, at least 1Gi"))
    scratch_size: str = field(default="20Gi", metadata=_doc(
        "size limit of the writable /scratch volume (dataset cache, upload staging, HOME, TMPDIR)"))
    namespace: str = field(default="", metadata=_doc(
        "namespace; default: -n, else the kubeconfig context's namespace"))
    schedule: str = field(default="", metadata=_doc(
        "cron schedule (5 fields, or @daily, @hourly...); when set, a CronJob is rendered"))
    time_zone: str = field(default="Etc/UTC", metadata=_doc(
        "IANA time zone of the schedule (schedule only)"))
    starting_deadline_seconds: int = field(default=0, metadata=_doc(
        "skip a run not started within this (schedule only); 0 = a tenth of the period, at most 1h"))
    successful_jobs_history_limit: int = field(default=3, metadata=_doc(
        "finished runs kept (schedule only)"))
    failed_jobs_history_limit: int = field(default=3, metadata=_doc(
        "failed runs kept, with their pods' logs (schedule only)"))
    active_deadline_seconds: int = field(default=0, metadata=_doc(
        "the Job fails after running this long; 0 = 1 day, or with a schedule the period minus "
        "starting_deadline_seconds (at most 1 day); must be shorter than the period"))
    backoff_limit: int = field(default=3, metadata=_doc(
        "retries after unexpected failures (exit 1); preemption does not count"))
    ttl_seconds_after_finished: int = field(default=7 * DAY_SECONDS, metadata=_doc(
        "a finished Job and its pods (and logs) are deleted after this"))
    termination_grace_period_seconds: int = field(default=120, metadata=_doc(
        "time between SIGTERM and SIGKILL, for the trainer's checkpoint"))
    node_selector: dict = field(default_factory=dict, metadata=_doc(
        "node labels the pod must match"))
    tolerations: tuple = field(default=(), metadata=_doc(
        "taints the pod tolerates: list of key, operator (Equal, Exists), value, effect, "
        "toleration_seconds"))
    queue: str = field(default="", metadata=_doc(
        "Kueue LocalQueue (label kueue.x-k8s.io/queue-name); the Job is created suspended"))
    priority_class: str = field(default="", metadata=_doc(
        "PriorityClass of the pods"))
    service_account: str = field(default="kubetrain-trainer", metadata=_doc(
        "ServiceAccount of the pods (k8s/base makes kubetrain-trainer)"))
    image_pull_policy: str = field(default="IfNotPresent", metadata=_doc(
        "when the kubelet pulls the image", PULL_POLICIES))
    storage: StorageSpec = field(default_factory=StorageSpec, metadata=_doc(
        "object-storage credentials: credentials, secret, secret_key"))
    env: dict = field(default_factory=dict, metadata=_doc(
        "extra environment variables, e.g. STORAGE_EMULATOR_HOST"))

    @property
    def scheduled(self) -> bool:
        return bool(self.schedule)

    @property
    def config_map_name(self) -> str:
        return config_map_name(self.name)


def config_map_name(job_name: str) -> str:
    """The ConfigMap that carries the trainer config of the Job or CronJob ``job_name``."""
    return f"{job_name}-config"


# ----------------------------------------------------------------------------- helpers


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _check_keys(values: Mapping[str, Any], valid: list[str], where: str) -> None:
    for key in values:
        if key not in valid:
            raise SpecError(f"unknown key {where + str(key)!r}; {_did_you_mean(str(key), valid)}")


def parse_quantity(value: Any, key: str) -> float:
    """A Kubernetes resource quantity ("500m", "16Gi", 4) as a number of units."""
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        raise SpecError(f"key {key!r}: {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    match = _QUANTITY.match(text)
    number = float(text[: match.start(3)] if match.group(3) else text)
    return number * _SUFFIX[match.group(3) or ""]


def _quantity(values: Mapping[str, Any], key: str, default: str) -> str:
    raw = values.get(key, default)
    if parse_quantity(raw, key) <= 0:
        raise SpecError(f"key {key!r}: must be > 0, got {raw!r}")
    return str(raw)


def _int(values: Mapping[str, Any], key: str, default: int, minimum: int = 0, where: str = "") -> int:
    raw = values.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise SpecError(f"key {where + key!r}: expected a whole number, got {raw!r}")
    if raw < minimum:
        raise SpecError(f"key {where + key!r}: must be >= {minimum}, got {raw}")
    return raw


def _str(values: Mapping[str, Any], key: str, default: str = "", choices: tuple[str, ...] | None = None,
         required: bool = False, where: str = "") -> str:
    if required and values.get(key) in (None, ""):
        raise SpecError(f"missing required key {where + key!r}")
    raw = values.get(key, default)
    if raw is None:
        raw = default
    if not isinstance(raw, str):
        raise SpecError(f"key {where + key!r}: expected a string, got {raw!r}")
    if choices and raw not in choices:
        raise SpecError(f"key {where + key!r}: {raw!r} is not one of: {', '.join(choices)}")
    return raw


def _mapping(values: Mapping[str, Any], key: str) -> dict:
    raw = values.get(key) or {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"key {key!r}: expected a mapping, got {raw!r}")
    return dict(raw)


def _dns_label(value: str, key: str, max_len: int = 63) -> str:
    if not _DNS_LABEL.match(value) or len(value) > max_len:
        raise SpecError(f"key {key!r}: {value!r} must be at most {max_len} lowercase letters, "
                        "digits or '-', starting and ending with a letter or digit")
    return value


def _labels(raw: dict, key: str) -> dict[str, str]:
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise SpecError(f"key {key!r}: {k!r} is not a valid label key")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not _LABEL_VALUE.match(str(v)):
            raise SpecError(f"key {key + '.' + k!r}: {v!r} is not a valid label value (quote it)")
        out[k] = str(v)
    return out


# ----------------------------------------------------------------------------- schedule


def validate_schedule(schedule: str) -> str:
    """The cron expression, if Kubernetes' CronJob accepts it; SpecError otherwise."""
    text = " ".join(schedule.split())
    if text.startswith("@"):
        if text not in CRON_MACROS:
            raise SpecError(f"key 'schedule': {schedule!r} is not a cron macro Kubernetes accepts; "
                            f"use 5 fields or one of: {', '.join(CRON_MACROS)}")
        return text
    if re.match(r"^(CRON_)?TZ=", text):
        raise SpecError("key 'schedule': put the time zone in 'time_zone', not in the schedule")
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise SpecError(f"key 'schedule': {schedule!r} is not a valid cron expression "
                        "(5 fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')")
    return text


def validate_time_zone(name: str) -> str:
    if not name or name == "Local" or name.startswith(("/", ".")) or " " in name:
        raise SpecError(f"key 'time_zone': {name!r} is not an IANA time zone (e.g. Europe/Berlin, Etc/UTC)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(f"key 'time_zone': unknown time zone {name!r} "
                        "(use an IANA name such as Europe/Berlin or Etc/UTC)") from None
    return name


def schedule_period_seconds(schedule: str, time_zone: str) -> int:
    """The shortest gap between two runs of ``schedule`` over about two years (deterministic).

    Computed in the schedule's time zone, so a daylight-saving night (23 h) is the period.
    """
    macro = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
             "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
             "@hourly": "0 * * * *"}
    expr = macro.get(schedule, schedule)
    start = dt.datetime(2025, 1, 1, tzinfo=ZoneInfo(time_zone))
    end = start + dt.timedelta(days=2 * 366)
    it = croniter(expr, start)
    prev = it.get_next(dt.datetime)
    shortest = None
    for _ in range(2000):
        nxt = it.get_next(dt.datetime)
        gap = int((nxt - prev).total_seconds())
        if gap > 0 and (shortest is None or gap < shortest):
            shortest = gap
        prev = nxt
        if nxt > end:
            break
    return shortest or 60


# ----------------------------------------------------------------------------- loading


def _tolerations(raw: Any) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(f"key 'tolerations': expected a list, got {raw!r}")
    valid = [f.name for f in fields(Toleration)]
    out = []
    for i, item in enumerate(raw):
        where = f"tolerations[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(f"key {where!r}: expected a mapping with keys {', '.join(valid)}")
        _check_keys(item, valid, where + ".")
        op = _str(item, "operator", "Equal", TOLERATION_OPERATORS, where=where + ".")
        effect = _str(item, "effect", "", where=where + ".")
        if effect and effect not in TAINT_EFFECTS:
            raise SpecError(f"key '{where}.effect': {effect!r} is not one of: {', '.join(TAINT_EFFECTS)}")
        value = item.get("value", "")
        value = "" if value is None else str(value)
        if op == "Exists" and value:
            raise SpecError(f"key '{where}.value': must be empty when operator is Exists")
        seconds = item.get("toleration_seconds")
        if seconds is not None:
            seconds = _int(item, "toleration_seconds", 0, where=where + ".")
            if effect != "NoExecute":
                raise SpecError(f"key '{where}.toleration_seconds': only valid with effect NoExecute")
        key = _str(item, "key", "", where=where + ".")
        if not key and op != "Exists":
            raise SpecError(f"key '{where}.key': an empty key needs operator Exists")
        out.append(Toleration(key=key, operator=op, value=value, effect=effect, toleration_seconds=seconds))
    return tuple(out)


def _storage(raw: Any) -> StorageSpec:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"key 'storage': expected a mapping, got {raw!r}")
    _check_keys(raw, [f.name for f in fields(StorageSpec)], "storage.")
    mode = _str(raw, "credentials", "none", CREDENTIAL_MODES, where="storage.")
    secret = _str(raw, "secret", "", where="storage.")
    secret_key = _str(raw, "secret_key", "key.json", where="storage.")
    if mode == "secret":
        if not secret:
            raise SpecError("key 'storage.secret': credentials=secret needs the Secret's name")
        _dns_label(secret, "storage.secret", 253)
        if not re.match(r"^[-._A-Za-z0-9]+$", secret_key):
            raise SpecError(f"key 'storage.secret_key': {secret_key!r} is not a valid Secret key")
    elif secret:
        raise SpecError(f"key 'storage.secret': only used with credentials=secret (it is {mode!r})")
    return StorageSpec(credentials=mode, secret=secret, secret_key=secret_key)


def _env(raw: dict) -> dict[str, str]:
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SpecError(f"key 'env': {name!r} is not a valid environment variable name")
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(f"key 'env.{name}': set by kubetrain itself; "
                            f"reserved: {', '.join(RESERVED_ENV)}, {RESERVED_ENV_PREFIX}*")
        if isinstance(value, (dict, list)) or value is None:
            raise SpecError(f"key 'env.{name}': expected a string, got {value!r}")
        out[name] = value if isinstance(value, str) else yaml.safe_dump(value).strip().removesuffix("...").strip()
    return out


def parse_spec(values: Mapping[str, Any], source: str = "spec",
               train_overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Validate a spec mapping (as read from YAML) into a frozen JobSpec, or raise SpecError."""
    try:
        return _parse(values, train_overrides)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None


def _parse(values: Mapping[str, Any], train_overrides: Mapping[str, Any] | None) -> JobSpec:
    if not isinstance(values, Mapping):
        raise SpecError("expected a mapping of spec keys at the top level")
    _check_keys(values, [f.name for f in fields(JobSpec)], "")

    schedule = _str(values, "schedule", "")
    if schedule:
        schedule = validate_schedule(schedule)
    time_zone = validate_time_zone(_str(values, "time_zone", "Etc/UTC"))
    if "time_zone" in values and not schedule:
        raise SpecError("key 'time_zone': only used with a 'schedule'")
    for cron_key in ("starting_deadline_seconds", "successful_jobs_history_limit", "failed_jobs_history_limit"):
        if cron_key in values and not schedule:
            raise SpecError(f"key {cron_key!r}: only used with a 'schedule'")

    name = _dns_label(_str(values, "name", required=True), "name",
                      MAX_CRONJOB_NAME if schedule else MAX_JOB_NAME)
    image = _str(values, "image", required=True)
    unpinned = image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]
    if any(c.isspace() for c in image) or (unpinned and "@sha256:" not in image):
        raise SpecError(f"key 'image': {image!r} must be pinned to a tag (not :latest) or a digest")

    gpus = _int(values, "gpus", 0)
    cpu = _quantity(values, "cpu", "2")
    memory = _quantity(values, "memory", "8Gi")
    memory_bytes = parse_quantity(memory, "memory")
    if memory_bytes < 2**27:
        raise SpecError(f"key 'memory': {memory!r} is too small; use a suffix, e.g. 8Gi")
    if values.get("shm_size", "auto") == "auto":
        shm_size = f"{max(1, gpus)}Gi"
    else:
        shm_size = _quantity(values, "shm_size", "auto")
    if parse_quantity(shm_size, "shm_size") >= memory_bytes:
        raise SpecError(f"key 'shm_size': {shm_size} must be smaller than 'memory' ({memory}): "
                        "/dev/shm is memory-backed and counts against the pod's memory limit")
    scratch_size = _quantity(values, "scratch_size", "20Gi")

    namespace = _str(values, "namespace", "")
    if namespace:
        _dns_label(namespace, "namespace")

    period = schedule_period_seconds(schedule, time_zone) if schedule else 0
    starting = _int(values, "starting_deadline_seconds", 0)
    deadline = _int(values, "active_deadline_seconds", 0)
    if schedule:
        if starting == 0:
            starting = min(3600, max(10, period // 10))
        if starting >= period:
            raise SpecError(f"key 'starting_deadline_seconds': {starting} must be shorter than the "
                            f"schedule's period ({period} s)")
        if deadline == 0:
            deadline = min(DAY_SECONDS, period - starting)
        if deadline >= period:
            raise SpecError(f"key 'active_deadline_seconds': {deadline} must be shorter than the "
                            f"schedule's period ({period} s), so runs never overlap or pile up")
    elif deadline == 0:
        deadline = DAY_SECONDS

    queue = _str(values, "queue", "")
    if queue:
        _dns_label(queue, "queue")
    priority_class = _str(values, "priority_class", "")
    if priority_class:
        _dns_label(priority_class, "priority_class", 253)
    service_account = _dns_label(_str(values, "service_account", "kubetrain-trainer"), "service_account", 253)

    train_raw = values.get("train")
    if train_raw is None:
        raise SpecError("missing required key 'train' (the trainer's settings: data, output, ...)")
    if not isinstance(train_raw, Mapping):
        raise SpecError(f"key 'train': expected a mapping, got {train_raw!r}")
    try:
        train = load_config(train_raw, train_overrides)
    except ConfigError as exc:
        raise SpecError(f"train: {exc}") from None

    return JobSpec(
        name=name,
        image=image,
        train=train,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        shm_size=shm_size,
        scratch_size=scratch_size,
        namespace=namespace,
        schedule=schedule,
        time_zone=time_zone,
        starting_deadline_seconds=starting,
        successful_jobs_history_limit=_int(values, "successful_jobs_history_limit", 3),
        failed_jobs_history_limit=_int(values, "failed_jobs_history_limit", 3),
        active_deadline_seconds=deadline,
        backoff_limit=_int(values, "backoff_limit", 3),
        ttl_seconds_after_finished=_int(values, "ttl_seconds_after_finished", 7 * DAY_SECONDS),
        termination_grace_period_seconds=_int(values, "termination_grace_period_seconds", 120),
        node_selector=_labels(_mapping(values, "node_selector"), "node_selector"),
        tolerations=_tolerations(values.get("tolerations")),
        queue=queue,
        priority_class=priority_class,
        service_account=service_account,
        image_pull_policy=_str(values, "image_pull_policy", "IfNotPresent", PULL_POLICIES),
        storage=_storage(values.get("storage")),
        env=_env(_mapping(values, "env")),
    )


def load_spec(path: str | Path, train_overrides: Mapping[str, Any] | None = None) -> JobSpec:
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
    return parse_spec(values, str(path), train_overrides)


def key_docs() -> list[tuple[str, str, Any, tuple[str, ...] | None]]:
    """(key, help, default, choices) for every spec key, for the docs."""
    rows = []
    for f in fields(JobSpec):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if f.name == "storage":
            for sub in fields(StorageSpec):
                rows.append((f"storage.{sub.name}", sub.metadata["help"], sub.default, sub.metadata["choices"]))
            continue
        rows.append((f.name, f.metadata["help"], default, f.metadata["choices"]))
    return rows
