"""Defaults that fit the data: how every ``auto`` config value is chosen, and why.

Pure rules (no I/O, no TensorFlow), in two steps:

* ``resolve(cfg)``, called by ``load_config``: what the config alone decides (initial weights,
  head epochs, warmup) and, for a built-in dataset whose images are known, everything else;
* ``fit(cfg, native, where)``: the input size from the images' native size and the
  augmentation from what the pixels can bear. The facts come from ``trainer.data.scan``, which
  reads the headers of a sample of the images (no decoding) or a packed dataset's manifest.

The rules, and the mistakes they avoid (issue 13):

* **image size**: the images' native size (median shorter side), clamped to the model's range:
  small images are not upscaled (28x28 glyphs at 64x64 cost 5x the compute and gain nothing),
  large photos are capped (64 for the small from-scratch models, the backbone's own default
  size, 224, for a keras.applications backbone);
* **flips**: horizontal when mirrored images keep their class, measured on the data
  (``trainer.data.mirror``: a classifier fitted on a sample recognises the sample's mirror
  images about as well as the images, ``flip_rule``); none otherwise: a mirrored glyph, digit
  or letter is often another class. Colour images the probe cannot classify get flips, grey
  ones do not; built-in digits and packed datasets (not probed) keep them off;
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
from dataclasses import dataclass

from trainer.config.fields import BACKBONES, TrainConfig

log = logging.getLogger(__name__)

BUILTIN_NATIVE_SIZE = {"digits": 8}  # scikit-learn's digits are 8x8
SCRATCH_SIZE_RANGE = {"seed_cnn": (16, 64), "resnet_small": (16, 64)}
BACKBONE_SIZE_RANGE = (32, 224)  # keras.applications' minimum input, and their ImageNet size
JITTER = {"rotation": 0.03, "shift": 0.05, "zoom": 0.05}
NO_JITTER_BELOW = 16  # px: one pixel is more than 6% of the image


@dataclass(frozen=True)
class Resolved:
    config: TrainConfig  # its ``auto_reasons`` include ``reasons``
    reasons: dict[str, str]  # dotted config key -> "value: why", for the values resolved now


MIN_PROBE_SIGNAL = 0.15  # probe accuracy above chance below which it cannot tell
MIRROR_KEEPS = 0.7  # share of that margin the mirrored images must keep for flips


@dataclass(frozen=True)
class MirrorProbe:
    """What ``trainer.data.mirror.probe`` measured on a sample of the training images."""

    accuracy: float  # held-out images, as they are
    flipped_accuracy: float  # the same images mirrored left-right
    chance: float  # the largest class's share of the held-out images
    sampled: int
    grayscale: bool

    @property
    def kept(self) -> float:
        """Share of the accuracy above chance that survives mirroring (1 = all of it)."""
        return (self.flipped_accuracy - self.chance) / max(1e-9, self.accuracy - self.chance)


def flip_rule(probe: MirrorProbe | None, unprobed: str) -> tuple[str, str]:
    """``augment.flip`` and its reason from the mirror probe (``unprobed``: why there is none)."""
    if probe is None:
        return "none", (f"none: {unprobed}, so flips stay off (a mirrored glyph can be another class);"
                        " set augment.flip=horizontal if mirror images keep the label")
    numbers = (f"a probe classifier on {probe.sampled} sampled images scored {probe.accuracy:.0%} on held-out"
               f" images and {probe.flipped_accuracy:.0%} on their mirror images (chance {probe.chance:.0%})")
    if probe.accuracy - probe.chance < MIN_PROBE_SIGNAL:
        if probe.grayscale:
            return "none", f"none: {numbers}: too weak to tell, and grey images may be glyphs or documents"
        return "horizontal", f"horizontal: {numbers}: too weak to tell, and colour photos keep their class mirrored"
    if probe.kept >= MIRROR_KEEPS:
        return "horizontal", f"horizontal: {numbers}: mirrored images keep their class ({probe.kept:.0%} kept)"
    return "none", f"none: {numbers}: mirrored images are other classes or shapes ({probe.kept:.0%} kept)"


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


def _fit_size(cfg: TrainConfig, native: NativeSize, where: str, reasons: dict[str, str],
              mirror: MirrorProbe | None = None, unprobed: str = "") -> TrainConfig:
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
        aug["flip"], reasons["augment.flip"] = flip_rule(mirror, unprobed or "the images were not probed")
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
        cfg = _fit_size(cfg, NativeSize(n, 0, n, n), f"builtin:{cfg.builtin} is {n}x{n}", reasons,
                        unprobed=f"builtin:{cfg.builtin} are handwritten digits, mirrored other shapes"
                                 " (tests/trainer/test_mirror.py probes them)")
    return _with_reasons(cfg, reasons)


def _with_reasons(cfg: TrainConfig, reasons: dict[str, str]) -> Resolved:
    return Resolved(dataclasses.replace(cfg, auto_reasons={**cfg.auto_reasons, **reasons}), reasons)


def is_resolved(cfg: TrainConfig) -> bool:
    a = cfg.augment
    return bool(cfg.image_size) and None not in (a.flip, a.rotation, a.shift, a.zoom)


def fit(cfg: TrainConfig, native: NativeSize, where: str, mirror: MirrorProbe | None = None,
        unprobed: str = "") -> Resolved:
    """Resolve the image-dependent ``auto`` values from the images' native size (``where``: how it
    was found, for the reasons) and the mirror probe (``unprobed``: why there is none)."""
    reasons: dict[str, str] = {}
    cfg = _fit_size(cfg, native, where, reasons, mirror, unprobed)
    for key, why in reasons.items():
        log.info("auto %s = %s", key, why)
    return _with_reasons(cfg, reasons)
