"""The job spec's own value checks and nested values: what ``jobs/spec.py``'s fields name as
their ``check`` beyond the generic ones in ``jobs/checks.py`` (a pinned image, the ``train:``
section through the trainer's own ``load_config``, env without credentials, tolerations, the
storage credentials), and the limits they enforce.

Each check takes the raw YAML value and its dotted key and returns the checked value, or None
for "take the field's default"; a bad value is one ``SpecError`` line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml

from jobs import checks
from jobs.checks import SpecError, dns_label, parse_quantity
from trainer.config import TrainConfig, load_config
from trainer.core.contract import ENV_PREFIX
from trainer.core.errors import ConfigError
from trainer.core.quoting import brief
from trainer.core.schema import doc_field

CREDENTIAL_MODES = ("none", "workload-identity", "secret")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Environment variables the rendered pod sets itself; a spec's env: may not change them.
RESERVED_ENV = ("HOME", "TMPDIR", "MPLCONFIGDIR", "PYTHONUNBUFFERED", "GOOGLE_APPLICATION_CREDENTIALS")

MAX_JOB_NAME = 63  # a Job's name becomes the value of its pods' job-name label
MAX_WORKERS = 256  # TensorFlow's collectives, not Kubernetes, set the practical limit
MIN_MEMORY_BYTES = 2**27  # less is a forgotten suffix ("8" instead of "8Gi")
# Env names that look like credentials: their values would sit in the manifest (readable by
# anyone who can read the Job) and in the CronJob's history; they come from a Secret instead.
_CREDENTIAL_NAME = re.compile(r".*(_KEY|_KEY_ID|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|"
                              r"API_?KEY).*", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# An image reference as the container runtime parses it (distribution/reference's grammar):
# [registry[:port]/]path[:tag][@digest], path components lowercase.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_REF = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?\Z")
MAX_IMAGE_REF = 4096


# ----------------------------------------------------------------------------- nested values


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


# ----------------------------------------------------------------------------- checks


def job_name(raw: Any, key: str) -> str | None:
    value = checks.required_string(raw, key)
    return value and dns_label(value, key, MAX_JOB_NAME)  # a CronJob's: see spec._cross_checks


def image(raw: Any, key: str) -> str | None:
    ref = checks.required_string(raw, key)
    if ref is None:
        return None
    match = _IMAGE_REF.match(ref)
    if match is None or len(ref) > MAX_IMAGE_REF:
        raise SpecError(f"key {brief(key)}: {brief(ref)} is not an image reference "
                        "([registry[:port]/]name:tag or name@sha256:<64 hex digits>; the name in "
                        "lowercase, the tag not empty)")
    tag, digest = match.group("tag"), match.group("digest")
    if digest and digest.startswith("sha256:") and len(digest) != len("sha256:") + 64:
        raise SpecError(f"key {brief(key)}: {brief(ref)}: a sha256 digest has 64 hex digits")
    if not digest and tag in (None, "latest"):
        raise SpecError(f"key {brief(key)}: {brief(ref)} must be pinned to a tag (not :latest) or a digest")
    return ref


def train(raw: Any, key: str) -> TrainConfig | None:
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


def workers(raw: Any, key: str) -> int:
    value = checks.whole_number(raw, key)
    if not 1 <= value <= MAX_WORKERS:
        raise SpecError(f"key {key!r}: must be between 1 and {MAX_WORKERS}, got {value}")
    return value


def memory(raw: Any, key: str) -> str:
    amount = checks.quantity(raw, key)
    if parse_quantity(amount, key) < MIN_MEMORY_BYTES:
        raise SpecError(f"key {brief(key)}: {brief(amount)} is too small; use a suffix, e.g. 8Gi")
    return amount


def shm_size(raw: Any, key: str) -> str:
    return "auto" if raw == "auto" else checks.quantity(raw, key)


def env(raw: Any, key: str) -> dict[str, str]:
    out = {}
    for name, value in (checks.mapping(raw, key) or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SpecError(f"key {brief(key)}: {brief(name)} is not a valid environment variable name")
        if name in RESERVED_ENV or name.startswith(ENV_PREFIX):
            raise SpecError(f"key '{key}.{name}': set by kubetrain itself; "
                            f"reserved: {', '.join(RESERVED_ENV)}, {ENV_PREFIX}*")
        if _CREDENTIAL_NAME.fullmatch(name) and name != "STORAGE_EMULATOR_HOST":
            raise SpecError(
                f"key '{key}.{name}': looks like a credential; a value here would be written into "
                f"the manifest: put it in a Secret and use env_from_secret: {{{name}: SECRET/KEY}}")
        if isinstance(value, (dict, list)) or value is None:
            raise SpecError(f"key '{key}.{name}': expected a string, got {brief(value)}")
        out[name] = value if isinstance(value, str) else yaml.safe_dump(value).strip().removesuffix("...").strip()
    return out


def env_from_secret(raw: Any, key: str) -> dict[str, tuple[str, str]]:
    """``{NAME: "secret-name/key"}``: env variables filled from Secrets by the kubelet."""
    out = {}
    for name, ref in (checks.mapping(raw, key) or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SpecError(f"key {brief(key)}: {brief(name)} is not a valid environment variable name")
        if name in RESERVED_ENV or name.startswith(ENV_PREFIX):
            raise SpecError(f"key '{key}.{name}': set by kubetrain itself")
        secret, sep, secret_key = ref.partition("/") if isinstance(ref, str) else ("", "", "")
        if not sep or not re.fullmatch(r"[-._A-Za-z0-9]+", secret_key):
            raise SpecError(f"key '{key}.{name}': expected SECRET/KEY (a Secret's name and a key "
                            f"in it), got {brief(ref)}")
        dns_label(secret, f"{key}.{name}", 253)
        out[name] = (secret, secret_key)
    return out


def tolerations(raw: Any, key: str) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(f"key {brief(key)}: expected a list, got {brief(raw)}")
    return tuple(toleration(item, f"{key}[{i}]") for i, item in enumerate(raw))


def toleration(item: Any, where: str) -> Toleration:
    if not isinstance(item, Mapping):
        valid = ", ".join(f.name for f in fields(Toleration))
        raise SpecError(f"key {brief(where)}: expected a mapping with keys {valid}")
    tol = checks.build(Toleration, item, where + ".")
    if tol.operator == "Exists" and tol.value:
        raise SpecError(f"key '{where}.value': must be empty when operator is Exists")
    if tol.toleration_seconds is not None and tol.effect != "NoExecute":
        raise SpecError(f"key '{where}.toleration_seconds': only valid with effect NoExecute")
    if not tol.key and tol.operator != "Exists":
        raise SpecError(f"key '{where}.key': an empty key needs operator Exists")
    return tol


def storage(raw: Any, key: str) -> StorageSpec | None:
    values = checks.mapping(raw, key)
    if values is None:
        return None
    spec = checks.build(StorageSpec, values, key + ".")
    if spec.credentials != "secret":
        if spec.secret:
            raise SpecError(f"key '{key}.secret': only used with credentials=secret "
                            f"(it is {brief(spec.credentials)})")
        return spec
    if not spec.secret:
        raise SpecError(f"key '{key}.secret': credentials=secret needs the Secret's name")
    dns_label(spec.secret, f"{key}.secret", 253)
    if not re.fullmatch(r"[-._A-Za-z0-9]+", spec.secret_key):
        raise SpecError(f"key '{key}.secret_key': {brief(spec.secret_key)} is not a valid Secret key")
    return spec
