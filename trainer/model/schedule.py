"""Training phases and the learning-rate schedule: which layers train in which epoch, how fast.

A run is one or two **phases**, each a range of epochs of the same run (same checkpoints, same
history, same optimizer):

* ``train``: every layer trains at ``learning_rate`` (models trained from scratch);
* ``head``: a pretrained backbone is frozen (its batch norm runs in inference mode: a frozen
  Keras 3 ``BatchNormalization`` uses its moving statistics) and only the new head trains, at
  ``learning_rate``, for ``head_epochs``;
* ``fine_tune``: then the top ``fine_tune_layers`` backbone layers with weights (all when
  unset) train too, at ``learning_rate x fine_tune_lr_scale``; batch norm stays frozen, as
  fine-tuning on a small dataset would otherwise wreck its ImageNet statistics.

The phase of an epoch is a pure function of the config, so a run resumed in any epoch (even
mid-phase) sets the same layers trainable as the run it continues. The optimizer is built once
for every variable any phase trains (Keras 3 optimizers create their slots per variable at
``build`` and refuse unknown variables later), so its checkpointed state has the same shape in
both phases; each phase's step applies gradients to its own subset.

Each phase has its own schedule (``lr_schedule``): ``warmup_cosine`` = linear warmup over
``warmup_epochs`` then cosine decay to zero at the phase's end; ``cosine`` = the decay alone;
``constant``. The schedule is a function of the optimizer's step counter, which the checkpoint
restores, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from trainer.config import TrainConfig
from trainer.config.auto import pretrained

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Phase:
    name: str  # "train", "head" or "fine_tune"
    first_epoch: int
    epochs: int
    peak_lr: float
    backbone_layers: int | None  # backbone layers with weights that train: None = all, 0 = frozen

    def describe(self) -> str:
        layers = ("all layers" if self.name == "train" else "the head only, backbone frozen"
                  if self.backbone_layers == 0 else "the head and all backbone layers"
                  if self.backbone_layers is None else f"the head and the top {self.backbone_layers} backbone layers")
        last = self.first_epoch + self.epochs
        return f"phase {self.name}: epochs {self.first_epoch + 1}-{last}, {layers}, peak learning rate {self.peak_lr:g}"


def find_backbone(model):
    """The nested keras.applications model (trainer/model/backbones.py), or None for the others."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def plan(cfg: TrainConfig, has_backbone: bool) -> tuple[Phase, ...]:
    """The run's phases, in epoch order, covering ``cfg.epochs``."""
    if not (has_backbone and pretrained(cfg)):
        return (Phase("train", 0, cfg.epochs, cfg.learning_rate, None),)
    head = min(cfg.epochs, cfg.head_epochs or 0)
    phases = []
    if head:
        phases.append(Phase("head", 0, head, cfg.learning_rate, 0))
    rest = cfg.epochs - head
    if rest and cfg.fine_tune_layers == 0:  # never unfreeze: the head phase takes every epoch
        return (Phase("head", 0, cfg.epochs, cfg.learning_rate, 0),)
    if rest:
        phases.append(Phase("fine_tune", head, rest, cfg.learning_rate * cfg.fine_tune_lr_scale,
                            cfg.fine_tune_layers))
    return tuple(phases)


def phase_of(phases: tuple[Phase, ...], epoch: int) -> Phase:
    current = phases[0]
    for phase in phases:
        if phase.first_epoch <= epoch:
            current = phase
    return current


def set_trainable(model, phase: Phase) -> None:
    """Make exactly the phase's layers trainable (idempotent; called at every epoch start)."""
    import keras

    model.trainable = True
    for layer in model.layers:  # (a functional model's own setter does not reach nested models)
        layer.trainable = layer.name != "caffe_preprocess"  # a fixed transform, never trained
    backbone = find_backbone(model)
    if backbone is None or phase.name == "train":
        return
    if phase.backbone_layers == 0:
        backbone.trainable = False
        return
    weighted = [layer for layer in backbone.layers if layer.weights]
    keep_frozen = len(weighted) - (len(weighted) if phase.backbone_layers is None
                                   else min(phase.backbone_layers, len(weighted)))
    for layer in weighted[:keep_frozen]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def optimizer_variables(model, phases: tuple[Phase, ...]) -> list:
    """Every variable some phase trains, in the model's order (what the optimizer is built for)."""
    seen: set[int] = set()
    for phase in phases:
        set_trainable(model, phase)
        seen.update(id(v) for v in model.trainable_variables)
    set_trainable(model, phases[0])
    return [v for v in model.weights if id(v) in seen]


def trainable_summary(model) -> tuple[int, int]:
    """(trainable, total) parameter counts as the model stands."""
    import numpy as np

    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return trainable, sum(int(np.prod(v.shape)) for v in model.weights)


def learning_rate(cfg: TrainConfig, phases: tuple[Phase, ...], steps_per_epoch: int):
    """The optimizer's learning rate: a schedule over the global step, phase by phase."""
    import keras
    import tensorflow as tf

    spans = []
    for phase in phases:
        steps = max(1, phase.epochs * steps_per_epoch)
        warm = 0
        if cfg.lr_schedule == "warmup_cosine":
            warm = min(steps // 2, round((cfg.warmup_epochs or 0) * steps_per_epoch))
        spans.append((phase.first_epoch * steps_per_epoch, steps, phase.peak_lr, warm))
    decay = cfg.lr_schedule in ("cosine", "warmup_cosine")

    class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            lr = tf.constant(spans[0][2], tf.float32)
            for start, steps, peak, warm in spans:  # later phases override from their start on
                t = step - start
                factor = tf.minimum(1.0, (t + 1.0) / warm) if warm else tf.constant(1.0)
                if decay:
                    progress = tf.clip_by_value((t - warm) / max(1, steps - warm), 0.0, 1.0)
                    factor *= 0.5 * (1.0 + tf.cos(math.pi * progress))
                lr = tf.where(t >= 0, peak * factor, lr)
            return lr

        def get_config(self):
            return {"spans": spans, "decay": decay}

    return PhasedSchedule()
