"""The configured optimizer and the per-example loss the training loop minimizes."""

from __future__ import annotations

from trainer.config import TrainConfig


def make_optimizer(cfg: TrainConfig, lr):
    """The configured optimizer over ``lr`` (a float or a schedule: see trainer/model/schedule.py)."""
    import keras

    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(lr)
    elif cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    else:
        opt = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)  # float16 gradients need loss scaling
    return opt


def per_example_loss(cfg: TrainConfig, num_classes: int):
    """The loss of each example (reduced by the loop over the global batch), with the configured
    label smoothing."""
    import keras
    import tensorflow as tf

    if cfg.label_smoothing:
        def loss(labels, probs):
            onehot = tf.one_hot(labels, num_classes)
            return keras.losses.categorical_crossentropy(onehot, probs, label_smoothing=cfg.label_smoothing)
        return loss
    return lambda labels, probs: keras.losses.sparse_categorical_crossentropy(labels, probs)
