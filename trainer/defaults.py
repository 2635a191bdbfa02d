"""Defaults that fit the data: how every ``auto`` config value is chosen, and why.

Two steps, both pure (no TensorFlow):

* ``resolve(cfg)``, called by ``load_config``: what the config alone decides (initial weights,
  head epochs, warmup) and, for a built-in dataset whose images are known, everything else;
* ``fit_to_data(cfg, root)``, called by the run after the dataset is on local disk: reads the
  headers of a sample of the images (no decoding) and picks the input size from their native
  size and the augmentation from what the pixels can bear.

The rules, and the mistakes they avoid (issue 13):

* **image size**: the images' native size (median shorter side), clamped to the model's range:
  small images are not upscaled (28x28 glyphs at 64x64 cost 5x the compute and gain nothing),
  large photos are capped (64 for the small from-scratch models, the backbone's own default
  size, 224, for a keras.applications backbone);
* **flips**: none unless asked: a mirrored glyph, letter or asymmetric object is often another
  class; photos whose mirror image keeps the label can turn them on (``augment.flip``);
* **geometric jitter**: mild (rotation 0.03 of a turn, shift and zoom 5%), and none for images
  under 16 px, where one pixel is already more than 6% of the image;
* **warmup**: ``min(1, epochs / 10)`` epochs of linear warmup at the start of each phase, then
  cosine decay (``lr_schedule: warmup_cosine``), so batch-norm statistics settle while the
  learning rate falls instead of swinging at a constant rate;
* **weights**: ImageNet for a keras.applications backbone, none (from scratch) otherwise;
* **head epochs**: with pretrained weights, a third of the epochs train the new head on the
  frozen backbone before fine-tuning (all of them when there are fewer than 3).

Each choice comes with a one-line reason, kept in the config's ``auto_reasons`` (so it is in
``config.yaml``, the report's config and ``report/metrics.json``).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from trainer.config import BACKBONES, TrainConfig

log = logging.getLogger(__name__)

BUILTIN_NATIVE_SIZE = {"digits": 8}  # scikit-learn's digits are 8x8
SCRATCH_SIZE_RANGE = {"seed_cnn": (16, 64), "resnet_small": (16, 64)}
BACKBONE_SIZE_RANGE = (32, 224)  # keras.applications' minimum input, and their ImageNet size
SCAN_SAMPLE = 256  # image headers read to find the native size
JITTER = {"rotation": 0.03, "shift": 0.05, "zoom": 0.05}
NO_JITTER_BELOW = 16  # px: one pixel is more than 6% of the image


@dataclass(frozen=True)
class Resolved:
    config: TrainConfig  # its ``auto_reasons`` include ``reasons``
    reasons: dict[str, str]  # dotted config key -> "value: why", for the values resolved now


@dataclass(frozen=True)
class NativeSize:
    size: int  # median shorter side, px
    sampled: int
    smallest: int
    largest: int


def size_range(model: str) -> tuple[int, int]:
    """(smallest, largest) input size ``auto`` picks for ``model``."""
    return BACKBONE_SIZE_RANGE if model in BACKBONES else SCRATCH_SIZE_RANGE[model]


def pretrained(cfg: TrainConfig) -> bool:
    """True when the model starts from trained weights (ImageNet or a file)."""
    return cfg.weights not in ("none", "auto") or (cfg.weights == "auto" and cfg.model in BACKBONES)


def _config_only(cfg: TrainConfig, reasons: dict[str, str]) -> TrainConfig:
    changes: dict = {}
    if cfg.weights == "auto":
        changes["weights"] = "imagenet" if cfg.model in BACKBONES else "none"
        reasons["weights"] = (
            f"{changes['weights']}: "
            + ("a keras.applications backbone starts from ImageNet features" if cfg.model in BACKBONES
               else f"{cfg.model} has no pretrained weights; trained from scratch")
        )
    if cfg.head_epochs is None:
        if pretrained(cfg):
            head = cfg.epochs if cfg.epochs < 3 else max(1, cfg.epochs // 3)
            why = (f"{head}: a third of {cfg.epochs} epochs train the new head on the frozen backbone,"
                   " then it is fine-tuned" if head < cfg.epochs
                   else f"{head}: fewer than 3 epochs, all train the head on the frozen backbone")
        else:
            head, why = 0, "0: no pretrained weights, every layer trains from the first epoch"
        changes["head_epochs"] = head
        reasons["head_epochs"] = why
    if cfg.warmup_epochs is None:
        warm = round(min(1.0, cfg.epochs / 10), 2)
        changes["warmup_epochs"] = warm
        reasons["warmup_epochs"] = (f"{warm}: min(1, epochs/10) epochs of linear warmup at the start"
                                    " of each phase, then the schedule decays")
    return dataclasses.replace(cfg, **changes)


def _fit_size(cfg: TrainConfig, native: NativeSize, where: str, reasons: dict[str, str]) -> TrainConfig:
    changes: dict = {}
    if not cfg.image_size:
        lo, hi = size_range(cfg.model)
        size = min(hi, max(lo, native.size))
        if size == native.size:
            why = f"the images' native size ({where}), not upscaled"
        elif size > native.size:
            why = f"native {native.size} px ({where}) raised to {cfg.model}'s minimum {lo}"
        else:
            why = f"native {native.size} px ({where}) capped at {hi} for {cfg.model}"
        changes["image_size"] = size
        reasons["image_size"] = f"{size}: {why}"
    a = cfg.augment
    aug: dict = {}
    if a.flip is None:
        aug["flip"] = "none"
        reasons["augment.flip"] = ("none: a mirrored glyph or asymmetric object can be another class;"
                                   " set augment.flip=horizontal if mirror images keep the label")
    small = native.size < NO_JITTER_BELOW
    for key, mild in JITTER.items():
        if getattr(a, key) is None:
            aug[key] = 0.0 if small else mild
            reasons[f"augment.{key}"] = (
                f"0.0: native {native.size} px images, one pixel is more than 6% of the image" if small
                else f"{mild}: mild jitter that keeps the label")
    if aug:
        changes["augment"] = dataclasses.replace(a, **aug)
    return dataclasses.replace(cfg, **changes)


def resolve(cfg: TrainConfig) -> Resolved:
    """The ``auto`` values the config alone decides (all of them for a built-in dataset)."""
    reasons: dict[str, str] = {}
    cfg = _config_only(cfg, reasons)
    if cfg.builtin in BUILTIN_NATIVE_SIZE:
        n = BUILTIN_NATIVE_SIZE[cfg.builtin]
        cfg = _fit_size(cfg, NativeSize(n, 0, n, n), f"builtin:{cfg.builtin} is {n}x{n}", reasons)
    return _with_reasons(cfg, reasons)


def _with_reasons(cfg: TrainConfig, reasons: dict[str, str]) -> Resolved:
    return Resolved(dataclasses.replace(cfg, auto_reasons={**cfg.auto_reasons, **reasons}), reasons)


def is_resolved(cfg: TrainConfig) -> bool:
    a = cfg.augment
    return bool(cfg.image_size) and None not in (a.flip, a.rotation, a.shift, a.zoom)


def _header_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None  # the decoding pass counts and reports unreadable files


def scan(root: Path, sample: int = SCAN_SAMPLE) -> NativeSize | None:
    """The native size of a class-folder dataset, from the headers of an even sample of its files."""
    from trainer.data import discover

    _, found = discover(root)
    files = [f for split_files, _ in found.values() for f in split_files]
    if not files:
        return None
    step = max(1, len(files) // sample)
    sizes = [s for s in (_header_size(f) for f in files[::step][:sample]) if s]
    if not sizes:
        return None
    shorter = [min(w, h) for w, h in sizes]
    return NativeSize(int(statistics.median(shorter)), len(sizes), min(shorter), max(shorter))


def fit_to_source(cfg: TrainConfig, scratch: Path) -> Resolved:
    """``fit_to_data`` for ``cfg.data`` wherever it is: built in, packed (the image sizes its
    manifest recorded when it was packed) or class folders (fetched first)."""
    if is_resolved(cfg) or cfg.builtin is not None:
        return fit_to_data(cfg, None)
    from trainer import packed, storage

    manifest = packed.read_manifest(storage.open_store(cfg.data))
    if manifest is not None:
        n = manifest.native_size
        if n:
            return _fit_logged(cfg, NativeSize(n["median_shorter_side"], n["images"], n["smallest"], n["largest"]),
                               f"median shorter side of the {n['images']} packed images,"
                               f" {n['smallest']}-{n['largest']} px (manifest)")
        size = size_range(cfg.model)[1]
        return _fit_logged(cfg, NativeSize(size, 0, size, size), "a packed dataset that records no image sizes")
    return fit_to_data(cfg, storage.fetch_dataset(cfg.data, scratch / "datasets"))


def fit_to_data(cfg: TrainConfig, root: Path | None) -> Resolved:
    """Resolve the image-dependent ``auto`` values from the dataset at ``root`` (None = built in)."""
    if is_resolved(cfg):
        return Resolved(cfg, {})
    if root is None:
        return resolve(cfg)
    native = scan(root)
    if native is None:  # nothing readable: the data loader reports it with exit code 3
        native = NativeSize(size_range(cfg.model)[1], 0, 0, 0)
        where = "no readable image found"
    else:
        where = (f"median shorter side of {native.sampled} sampled images,"
                 f" {native.smallest}-{native.largest} px")
    return _fit_logged(cfg, native, where)


def _fit_logged(cfg: TrainConfig, native: NativeSize, where: str) -> Resolved:
    reasons: dict[str, str] = {}
    cfg = _fit_size(cfg, native, where, reasons)
    for key, why in reasons.items():
        log.info("auto %s = %s", key, why)
    return _with_reasons(cfg, reasons)
