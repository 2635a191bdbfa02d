"""Model architectures. Every model takes raw ``uint8``-range pixels [B, S, S, 3] and normalizes
them itself (``Rescaling(1/255)``), so the exported model needs no separate preprocessing.

* ``seed_cnn``: exactly the tutorial's network: Conv2D(32)-MaxPool-Conv2D(64)-MaxPool-Flatten-
  Dense(128)-Dense(N, softmax), for any input size and class count.
* ``resnet_small``: a small residual network with batch normalization and global average
  pooling: more accurate for the same budget, and it does not grow with the input size.
* the keras.applications backbones (``efficientnetv2b0``, ``mobilenetv3small``/``large``,
  ``resnet50``, ``convnext_tiny``) with a new head: trainer/model/backbones.py.
"""

from __future__ import annotations

import warnings

from trainer.core.errors import ConfigError
from trainer.model import backbones
from trainer.model.backbones import BACKBONES

MIN_IMAGE_SIZE = {"seed_cnn": 14, "resnet_small": 16}


def seed_cnn(image_size: int, num_classes: int):
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="seed_cnn",
    )


def _residual_block(x, filters: int, stride: int):
    from keras import layers

    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=0.9)(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization(momentum=0.9)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet_small(image_size: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)):
    """A ResNet-style network: stem, one residual block per stage (stride 2 after the first)."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    if image_size >= 96:  # large inputs: downsample early, as ResNets do
        x = layers.Conv2D(widths[0], 5, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    else:
        x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
    for i, filters in enumerate(widths):
        x = _residual_block(x, filters, stride=1 if i == 0 else 2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet_small")


BUILDERS = {"seed_cnn": seed_cnn, "resnet_small": resnet_small}


def min_image_size(name: str) -> int:
    if name in MIN_IMAGE_SIZE:
        return MIN_IMAGE_SIZE[name]

    return BACKBONES[name].min_size


def build_model(name: str, image_size: int, num_classes: int, weights_path: str | None = None):
    """The named model; ``name`` was validated against ``trainer.config.MODELS``.

    ``weights_path``: initial weights (trainer/model/weights.py resolved them): the backbone's for a
    keras.applications backbone (trainer/model/backbones.py), the whole model's otherwise. A file that
    does not fit is a ConfigError naming it.
    """
    smallest = min_image_size(name)
    if image_size < smallest:
        raise ConfigError(f"model {name!r} needs image_size >= {smallest}, got {image_size}")
    if name in BUILDERS:
        model = target = BUILDERS[name](image_size, num_classes)
        what = "model"
    else:

        model = backbones.build(name, image_size, num_classes, pretrained=bool(weights_path))
        target, what = backbones.backbone_of(model), "backbone"
    if weights_path:
        try:
            with warnings.catch_warnings():  # Keras warns once per layer that does not fit
                warnings.simplefilter("ignore")
                target.load_weights(weights_path)
        except Exception as exc:  # noqa: BLE001 (h5py, ValueError, KeyError: all mean "wrong file")
            raise ConfigError(f"weights file {weights_path} does not fit {what} {name!r}: "
                              f"{load_error_reason(exc)}") from None
    return model


def load_error_reason(exc: BaseException) -> str:
    """The reason in a Keras ``load_weights`` error, in one short line: its header ("A total of
    N objects could not be loaded.") and the first reason line after it, without the variable's
    values that Keras prints with it."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0].split(" Example error message")[0]
    reason = next((line for line in lines[1:] if not line.startswith(("List of objects", "[<"))), "")
    reason = reason.split(" Target variable:")[0]
    text = f"{head} {reason}".strip()
    return text if len(text) <= 300 else text[:297] + "..."
