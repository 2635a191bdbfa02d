"""The config's keys: every field with its type, default, help text and choices (``--help``,
the README's table and the error messages come from here), and the choices' vocabularies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

import yaml

from trainer.core.schema import doc_field

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("digits",)
SCRATCH_MODELS = ("seed_cnn", "resnet_small")
# keras.applications backbones (trainer/model/backbones.py builds them; names only here, no TensorFlow)
BACKBONES = ("efficientnetv2b0", "mobilenetv3small", "mobilenetv3large", "resnet50", "convnext_tiny")
MODELS = SCRATCH_MODELS + BACKBONES
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("warmup_cosine", "cosine", "constant")
EXPORT_EPOCHS = ("best", "last")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
STRATEGIES = ("auto", "mirrored", "one_device")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
SWITCHES = ("auto", "on", "off")
CACHES = ("auto", "memory", "disk", "none")


_f = doc_field  # a field with its default, help text and choices (used by --help and errors)


@dataclass(frozen=True)
class AugmentConfig:
    """Random training-time augmentation (Keras preprocessing layers); None = per-dataset default."""

    rotation: float | None = _f(None, "max rotation as a fraction of a full turn (0.05 = 18 deg)")
    shift: float | None = _f(None, "max shift as a fraction of height/width")
    zoom: float | None = _f(None, "max zoom in/out as a fraction")
    flip: str | None = _f(None, "random flips", FLIPS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Built only by ``load_config``; never mutated."""

    data: str = _f("", "dataset: builtin:digits, a local directory, or gs://bucket/prefix")
    output: str = _f("", "run directory: a local directory or gs://bucket/prefix")
    model: str = _f("resnet_small", "network architecture", MODELS)
    image_size: int = _f(0, "square input size in pixels; 0 = auto: the images' native size, within the model's range")
    epochs: int = _f(10, "number of passes over the training split")
    batch_size: int = _f(64, "batch size per replica; global batch = this x replicas")
    optimizer: str = _f("adam", "optimizer", OPTIMIZERS)
    learning_rate: float = _f(1e-3, "peak learning rate (scaled by nothing: set it for the global batch)")
    lr_schedule: str = _f("warmup_cosine", "learning-rate schedule of each training phase", LR_SCHEDULES)
    warmup_epochs: float | None = _f(None, "linear warmup at the start of each phase; auto = min(1, epochs/10)")
    weight_decay: float = _f(0.0, "decoupled weight decay (adamw, sgd)")
    label_smoothing: float = _f(0.0, "label smoothing for the cross-entropy loss")
    augment: AugmentConfig = _f(AugmentConfig, "training-time augmentation")  # noqa: RUF009 (a Field)
    val_fraction: float = _f(0.1, "validation share when the dataset has no val/ split")
    test_fraction: float = _f(0.1, "test share when the dataset has no test/ split")
    seed: int = _f(1337, "seed for splits, shuffling and initialization")
    strategy: str = _f("auto", "auto = MirroredStrategy over all GPUs (or cpu_replicas), else one device", STRATEGIES)
    cpu_replicas: int = _f(0, "split the CPU into N logical devices and mirror over them (tests, no GPU)")
    precision: str = _f("auto", "auto = per machine: bf16 on CPUs with bf16 units, by compute capability on GPUs", PRECISIONS)
    jit_compile: str = _f("auto", "XLA compilation; auto = on for GPU, off for CPU (slower there)", SWITCHES)
    steps_per_execution: int = _f(0, "training steps per call into the compiled graph; 0 = auto: calls of"
                                  " ~0.5 s from the measured step time (1-128)")
    cache: str = _f("auto", "decoded-image cache: auto = memory when it fits, else disk", CACHES)
    stream_window: int = _f(4, "packed datasets: shards fetched ahead onto local scratch while training")
    max_bad_image_fraction: float = _f(0.01, "corrupt images are skipped; above this share the run fails")
    max_image_pixels: int = _f(40_000_000, "images larger than this (width x height, read from the "
                               "header before decoding) are skipped and counted as bad")
    keep_checkpoints: int = _f(3, "how many epoch checkpoints to keep")
    rendezvous_timeout_seconds: int = _f(600, "multi-worker: wait at most this long for all workers to join (then exit 1)")
    collective_timeout_seconds: int = _f(900, "multi-worker: a step waiting longer than this for the others restarts all (exit 75)")
    export_epoch: str = _f("best", "evaluate and export the weights of the best validation epoch, or the last", EXPORT_EPOCHS)
    weights: str = _f("auto", "initial weights: imagenet, none, or a .weights.h5 file / gs:// URI for the "
                              "model; auto = imagenet for keras.applications backbones, none otherwise")
    weights_mirror: str = _f("", "a directory or gs:// prefix holding Keras' ImageNet weight files, "
                                 "tried after Keras' cache and before downloading")
    head_epochs: int | None = _f(None, "pretrained backbones: epochs training the new head on a frozen "
                                       "backbone first; auto = a third of the epochs (all if epochs < 3)")
    fine_tune_layers: int | None = _f(None, "pretrained backbones: unfreeze the top N backbone layers after "
                                            "the head epochs; auto = all; 0 = never")
    fine_tune_lr_scale: float = _f(0.1, "fine-tuning learning rate = learning_rate x this")
    export: bool = _f(True, "export the trained model under <output>/model/")
    promote_to: str = _f("", "copy model/ and report/ here only if better than the model already there")
    promotion_alpha: float = _f(0.05, "promote_to: promote only when McNemar's test on images neither "
                                "model trained on gives p below this")
    promotion_max_recall_drop: float = _f(0.05, "promote_to: no class's recall may drop by more than this")
    skip_unchanged: bool = _f(True, "promote_to: a run whose dataset and recipe are the served model's "
                              "(nothing new) ends before training, exit 0, recorded as skipped")
    promotion_wait_seconds: float = _f(900.0, "promote_to: how long to wait while another run promotes "
                                       "to the same target before giving up (not promoted, recorded)")
    auto_reasons: dict[str, str] = _f(dict, "written by the trainer: how each value left at auto was chosen")  # noqa: RUF009

    @property
    def builtin(self) -> str | None:
        """The built-in dataset's name, or None when ``data`` is a directory or bucket."""
        return self.data[len(BUILTIN_PREFIX):] if self.data.startswith(BUILTIN_PREFIX) else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def recipe_fingerprint(self) -> str:
        """``sha256:<hex>`` of what decides the model a run trains, given its images: every key
        except those saying where it runs, where it writes and how it is published."""
        recipe = {k: v for k, v in self.to_dict().items() if k not in NOT_THE_RECIPE}
        return "sha256:" + hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


# Keys that say where a run reads and writes, how it is carried out or published, not what it
# learns from its images (the data's own fingerprint covers the images): two runs differing
# only in these train the same model (``skip_unchanged``).
NOT_THE_RECIPE = ("data", "output", "export", "promote_to", "promotion_alpha", "promotion_max_recall_drop",
                  "promotion_wait_seconds", "skip_unchanged", "keep_checkpoints", "cache", "stream_window",
                  "rendezvous_timeout_seconds", "collective_timeout_seconds", "weights_mirror",
                  "steps_per_execution", "jit_compile", "auto_reasons")


def field_docs() -> list[tuple[str, str, Any, tuple[str, ...] | None]]:
    """(dotted key, help, default, choices) for every config key, for --help and the README."""
    rows = []
    for f in fields(TrainConfig):
        if f.default_factory is AugmentConfig:
            for sub in fields(AugmentConfig):
                rows.append((f"augment.{sub.name}", sub.metadata["help"], sub.default, sub.metadata["choices"]))
        else:
            default = {} if f.default is dataclasses.MISSING else f.default
            rows.append((f.name, f.metadata["help"], default, f.metadata["choices"]))
    return rows
