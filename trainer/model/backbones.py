"""keras.applications backbones with a new classification head.

A backbone model is ``raw pixels [B, S, S, 3] in 0..255 -> [the backbone's own preprocessing]
-> backbone (a nested keras.applications model, global average pooled) -> Dropout -> Dense(N, softmax, float32)``.
The preprocessing lives inside the model, so the exported model keeps taking raw pixels like
the from-scratch models:

* EfficientNetV2, MobileNetV3 and ConvNeXt carry it themselves (``include_preprocessing``);
* ResNet50 expects Caffe-style input (BGR, ImageNet mean subtracted): a frozen 1x1 convolution
  in front does exactly that (a channel permutation and a bias), a plain Keras layer that
  saves and loads without custom code.

The head's output is float32 under mixed precision. ``Backbone.imagenet_file`` is the name
Keras gives the no-top ImageNet weights in its cache (``$KERAS_HOME/models/``), which is where
the GPU image bakes them (docker/Dockerfile) and where trainer/model/weights.py looks first.
"""

from __future__ import annotations

from dataclasses import dataclass

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
HEAD_DROPOUT = 0.2


@dataclass(frozen=True)
class Backbone:
    name: str  # the config's model name
    constructor: str  # attribute of keras.applications
    default_size: int  # the size it was trained on (ImageNet); ``auto`` never goes above it
    min_size: int  # smallest input the architecture accepts
    imagenet_file: str  # Keras' cache file name of the no-top ImageNet weights
    url_dir: str  # directory under KERAS_WEIGHTS_URL
    caffe_input: bool = False  # needs BGR + mean subtraction in front
    own_preprocessing: bool = True  # takes include_preprocessing=True

    @property
    def imagenet_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.url_dir}/{self.imagenet_file}"


BACKBONES = {
    b.name: b
    for b in (
        Backbone("efficientnetv2b0", "EfficientNetV2B0", 224, 32, "efficientnetv2-b0_notop.h5", "efficientnet_v2"),
        Backbone("mobilenetv3small", "MobileNetV3Small", 224, 32,
                 "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "mobilenet_v3"),
        Backbone("mobilenetv3large", "MobileNetV3Large", 224, 32,
                 "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "mobilenet_v3"),
        Backbone("resnet50", "ResNet50", 224, 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "resnet", caffe_input=True, own_preprocessing=False),
        Backbone("convnext_tiny", "ConvNeXtTiny", 224, 32, "convnext_tiny_notop.h5", "convnext"),
    )
}


def _caffe_preprocess(x):
    """RGB 0..255 -> BGR minus the ImageNet mean, as a frozen 1x1 convolution."""
    import numpy as np
    from keras import layers

    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out_ch, in_ch in enumerate((2, 1, 0)):  # output B, G, R from input channels 2, 1, 0
        kernel[0, 0, in_ch, out_ch] = 1.0
    conv = layers.Conv2D(3, 1, name="caffe_preprocess", trainable=False)
    y = conv(x)
    conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])  # saved with the model
    return y


def build_backbone(name: str, image_size: int):
    """The bare keras.applications model (no top, average pooled), weights random."""
    import keras

    spec = BACKBONES[name]
    kwargs = {"include_preprocessing": True} if spec.own_preprocessing else {}
    return getattr(keras.applications, spec.constructor)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg", **kwargs)


SCRATCH_BN_MOMENTUM = 0.9


def build(name: str, image_size: int, num_classes: int, pretrained: bool = False):
    """Backbone + new head, weights random; ``trainer.model.build.build_model`` checks the size and
    loads pretrained weights into ``backbone_of(model)``.

    From scratch (``pretrained`` False) every BatchNormalization's momentum drops to 0.9. The
    keras.applications value (0.99, MobileNetV3 0.999) is tuned for ImageNet-length runs: in a
    short run the moving statistics never leave their initial values, so the trained model
    scores at chance in inference while its training accuracy is high. Pretrained backbones keep
    theirs: their moving statistics already fit and fine-tuning freezes them (trainer/model/schedule.py).
    """
    import keras
    from keras import layers

    spec = BACKBONES[name]
    backbone = build_backbone(name, image_size)
    if not pretrained:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = keras.Input((image_size, image_size, 3))
    x = _caffe_preprocess(inputs) if spec.caffe_input else inputs
    x = backbone(x)
    x = layers.Dropout(HEAD_DROPOUT, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def backbone_of(model):
    from trainer.model.schedule import find_backbone

    return find_backbone(model)


def save_backbone_weights(model, path) -> bool:
    """Write the backbone's weights (``.weights.h5``) for a later ``weights: <file>``; False if none."""
    backbone = backbone_of(model)
    if backbone is None:
        return False
    backbone.save_weights(str(path))
    return True


def bake(names: list[str], keras_home: str) -> list[str]:
    """Download the named backbones' ImageNet weights into ``keras_home``/models (image build time)."""
    import keras

    paths = []
    for name in names:
        spec = BACKBONES[name]
        paths.append(keras.utils.get_file(spec.imagenet_file, spec.imagenet_url, cache_subdir="models",
                                          cache_dir=keras_home))
    return paths


if __name__ == "__main__":  # docker/Dockerfile: python3 backbones.py bake NAME,NAME,...
    import os
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "bake":
        sys.exit("usage: python3 -m trainer.model.backbones bake NAME[,NAME...]   (into $KERAS_HOME/models)")
    wanted = [n for n in sys.argv[2].split(",") if n]
    unknown = sorted(set(wanted) - set(BACKBONES))
    if unknown:
        sys.exit(f"unknown backbone(s) {unknown}; available: {', '.join(BACKBONES)}")
    for path in bake(wanted, os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras")):
        print(path)
