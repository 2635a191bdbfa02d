"""The trainer's one typed configuration: its keys (``fields.py``), how it is loaded (here) and
how its ``auto`` values are chosen (``auto.py``).

Layers, applied in order and validated once at the edge:
defaults -> YAML file (unknown keys rejected) -> command-line overrides -> validation ->
frozen. Values left at ``auto`` are filled in two steps by ``trainer.config.auto``: what depends
only on the config here, what depends on the images (their native size) after the data scan
(``trainer.config.auto.fit_to_data``). The resolved config, with the reason for every ``auto``
choice, is written next to the outputs (``<output>/config.yaml``) so every run can be reproduced.

This module imports neither TensorFlow nor any cloud client: the launcher (``jobs/``) uses
it to validate a job spec's ``train:`` section without a heavy import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from trainer.config.auto import resolve
from trainer.config.fields import (
    BACKBONES,
    BUILTIN_DATASETS,
    BUILTIN_PREFIX,
    CACHES,
    EXPORT_EPOCHS,
    FLIPS,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
    SCRATCH_MODELS,
    STRATEGIES,
    SWITCHES,
    AugmentConfig,
    TrainConfig,
    field_docs,
)
from trainer.core.errors import ConfigError
from trainer.core.quoting import brief
from trainer.core.schema import check_keys
from trainer.storage.uri import is_inside, validate_uri

__all__ = ["BACKBONES", "BUILTIN_DATASETS", "BUILTIN_PREFIX", "CACHES", "EXPORT_EPOCHS", "FLIPS",
           "LR_SCHEDULES", "MODELS", "OPTIMIZERS", "PRECISIONS", "SCRATCH_MODELS", "STRATEGIES",
           "SWITCHES", "AugmentConfig", "TrainConfig", "field_docs", "load_config",
           "merge_values", "multi_worker_problem", "parse_overrides", "read_config_file", "read_yaml"]

def _coerce(name: str, value: Any, typ: str, choices: tuple[str, ...] | None) -> Any:
    """Convert one YAML/CLI value to the field's type, or raise ConfigError naming the key."""
    if value is None and "None" in typ:
        return None
    base = typ.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if base.startswith("dict"):
            if not isinstance(value, Mapping):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {brief(name)}: expected {base}, got {brief(value)}") from None
    if choices and value not in choices:
        raise ConfigError(f"config key {brief(name)}: {brief(value)} is not one of: {', '.join(choices)}")
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {brief(prefix.rstrip('.') or '<top>')} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(values, known, prefix, what="config key")
    kwargs = {}
    for name, value in values.items():
        f = known[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, value, str(f.type), f.metadata.get("choices"))
    return cls(**kwargs)


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["augment.flip=none", "epochs=3"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {brief(pair)}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


MAX_CONFIG_FILE_BYTES = 1 << 20  # a config is a screenful of keys; anything bigger is a mistake


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path``; every way it can be unreadable is a ConfigError."""
    where = brief(path)
    p = Path(path)
    try:
        if not p.exists():
            raise ConfigError(f"config file {where} not found")
        if not p.is_file():
            raise ConfigError(f"config file {where} is not a regular file")
        if p.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"config file {where} is larger than {MAX_CONFIG_FILE_BYTES >> 20} MiB; "
                              "is it the right file?")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {where} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {where} is not UTF-8 text (bad byte at offset {exc.start}); "
                          "save it as UTF-8") from None
    return read_yaml(text, path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently: ``env: {A: 1, A: 2}`` would set A once, to 2, with no word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise DuplicateKey(f"key {brief(key)} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ConfigError(f"{brief(source)}: line {exc.problem_mark.line + 1}: {exc.problem}; "
                          "give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{brief(source)}:{where} is not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{brief(source)}: YAML nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{brief(source)}: expected a mapping of config keys at the top level")
    return loaded


def _validate(cfg: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(bool(cfg.data), "no dataset: pass --data (builtin:digits, a directory or gs://bucket/prefix)")
    need(bool(cfg.output), "no output: pass --output (a directory or gs://bucket/prefix)")
    if cfg.builtin is not None:
        need(cfg.builtin in BUILTIN_DATASETS,
             f"unknown built-in dataset {cfg.data!r}; available: "
             + ", ".join(BUILTIN_PREFIX + d for d in BUILTIN_DATASETS))
    for uri_key in ("data", "output", "promote_to", "weights", "weights_mirror"):
        validate_uri(uri_key, getattr(cfg, uri_key))
    need(cfg.builtin is not None or not is_inside(cfg.output, cfg.data),
         f"output {brief(cfg.output)} is the dataset {brief(cfg.data)} or inside it: the run would "
         "write into the dataset and every later run would train on its outputs; use another --output")
    need(cfg.max_image_pixels >= 1, "config key 'max_image_pixels': must be >= 1")
    need(0 < cfg.promotion_alpha < 1, "config key 'promotion_alpha': must be in (0, 1)")
    need(0 <= cfg.promotion_max_recall_drop <= 1, "config key 'promotion_max_recall_drop': must be in [0, 1]")
    need(0 <= cfg.promotion_wait_seconds <= 86400,
         "config key 'promotion_wait_seconds': must be between 0 and 86400 (a day)")
    need(cfg.image_size >= 16 or cfg.image_size == 0,
         f"config key 'image_size': {cfg.image_size} is too small (minimum 16)")
    need(cfg.image_size <= 1024, f"config key 'image_size': {cfg.image_size} is too large (maximum 1024)")
    need(cfg.epochs >= 1, f"config key 'epochs': must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"config key 'batch_size': must be >= 1, got {cfg.batch_size}")
    need(cfg.learning_rate > 0, f"config key 'learning_rate': must be > 0, got {cfg.learning_rate}")
    need(cfg.weight_decay >= 0, f"config key 'weight_decay': must be >= 0, got {cfg.weight_decay}")
    need(0 <= cfg.label_smoothing < 1, "config key 'label_smoothing': must be in [0, 1)")
    need(0 <= cfg.val_fraction < 0.5, "config key 'val_fraction': must be in [0, 0.5)")
    need(0 < cfg.test_fraction < 0.5, "config key 'test_fraction': must be in (0, 0.5)")
    need(cfg.cpu_replicas >= 0, "config key 'cpu_replicas': must be >= 0")
    need(cfg.stream_window >= 1, "config key 'stream_window': must be >= 1")
    need(cfg.steps_per_execution >= 0, "config key 'steps_per_execution': must be >= 0 (0 = auto)")
    need(0 <= cfg.max_bad_image_fraction <= 1, "config key 'max_bad_image_fraction': must be in [0, 1]")
    need(cfg.keep_checkpoints >= 1, "config key 'keep_checkpoints': must be >= 1")
    need(cfg.rendezvous_timeout_seconds >= 10, "config key 'rendezvous_timeout_seconds': must be >= 10")
    need(cfg.collective_timeout_seconds >= 30, "config key 'collective_timeout_seconds': must be >= 30")
    need(cfg.warmup_epochs is None or cfg.warmup_epochs >= 0, "config key 'warmup_epochs': must be >= 0")
    need(cfg.head_epochs is None or cfg.head_epochs >= 0, "config key 'head_epochs': must be >= 0")
    need(cfg.fine_tune_layers is None or cfg.fine_tune_layers >= 0, "config key 'fine_tune_layers': must be >= 0")
    need(0 < cfg.fine_tune_lr_scale <= 1, "config key 'fine_tune_lr_scale': must be in (0, 1]")
    need(cfg.weights in ("auto", "imagenet", "none") or cfg.weights.endswith(".h5"),
         f"config key 'weights': {cfg.weights!r} is not imagenet, none, auto or a .h5 / .weights.h5 file or URI")
    need(cfg.weights != "imagenet" or cfg.model in BACKBONES,
         f"config key 'weights': imagenet weights exist only for the backbones ({', '.join(BACKBONES)})")
    need(not cfg.promote_to or cfg.builtin is not None or not is_inside(cfg.promote_to, cfg.data),
         f"config key 'promote_to': {brief(cfg.promote_to)} is the dataset {brief(cfg.data)} or "
         "inside it: promoting would write model/ and report/ into the dataset")
    need(not cfg.promote_to or cfg.export, "config key 'promote_to' needs export: true")
    need(not cfg.promote_to or cfg.promote_to.rstrip("/") != cfg.output.rstrip("/"),
         "config key 'promote_to' must differ from output")
    a = cfg.augment
    for name in ("rotation", "shift", "zoom"):
        value = getattr(a, name)
        need(value is None or 0 <= value <= 0.5, f"config key 'augment.{name}': must be in [0, 0.5]")


def multi_worker_problem(cfg: TrainConfig) -> str | None:
    """What in ``cfg`` a multi-worker run cannot do, or None: the one statement of the rule, for
    the launcher (a spec with ``workers`` > 1) and the trainer (a cluster in the environment)."""
    if cfg.cpu_replicas > 1 or cfg.strategy == "one_device":
        return ("with several workers every GPU of each worker is a replica (one CPU device without "
                "GPUs): leave strategy at auto/mirrored and cpu_replicas at 0 or 1")
    return None


def load_config(
    file_values: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults -> file values -> overrides -> validated, frozen config, with the ``auto`` values
    known before the data scan resolved (``trainer.config.auto.resolve``; the image-dependent ones
    stay ``auto`` for a directory or bucket until ``trainer.config.auto.fit_to_data``)."""
    merged = merge_values(file_values or {}, overrides or {})
    cfg = _build(TrainConfig, merged)
    _validate(cfg)
    return resolve(cfg).config
