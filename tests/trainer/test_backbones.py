"""keras.applications backbones (trainer/model/backbones.py), initial weights (trainer/model/weights.py) and
the head / fine-tune phases (trainer/model/schedule.py), with real TensorFlow on tiny images.

Nothing here downloads: ImageNet weights are stood in for by files the tests write themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.config import BACKBONES, load_config
from trainer.core.errors import EXIT_CONFIG, ConfigError

from .conftest import run_trainer

SIZE = 32  # the smallest input every backbone accepts


def _cfg(data: Path, out: Path, **kw):
    values = {"data": str(data), "output": str(out), "image_size": SIZE, "epochs": 1, "batch_size": 16,
              "steps_per_execution": 2, "weights": "none"}
    values.update(kw)
    return load_config(values)


def _trainer(cfg, **kw):
    from trainer.data.dataset import load_dataset
    from trainer.model.weights import resolve
    from trainer.runtime.devices import make_runtime
    from trainer.training.loop import Trainer

    return Trainer(cfg, make_runtime(cfg), load_dataset(cfg, Path(cfg.data)),
                   init_weights=resolve(cfg, Path(cfg.output) / "scratch"), **kw)


def _checkpointer(trainer, out: Path):
    from trainer.storage import LocalRunDir
    from trainer.training.checkpoint import Checkpointer

    return Checkpointer(LocalRunDir(str(out)), trainer.model, trainer.optimizer, keep=2)


def _features(model, images):
    from trainer.model.schedule import find_backbone

    x = images.astype("float32")
    inner = find_backbone(model)
    if model.layers[1].name == "caffe_preprocess":
        x = model.layers[1](x)
    return np.asarray(inner(x, training=False))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mobilenetv3small" else [pytest.mark.slow])
                                  for n in BACKBONES])  # the big ones: 1-3 min each on 2 busy cores
def test_each_backbone_trains_saves_and_reloads(tiny_folder, tmp_path, name):
    import keras

    from trainer.core.preemption import StopRequest

    cfg = _cfg(tiny_folder, tmp_path / "out", model=name)
    trainer = _trainer(cfg)
    assert [p.name for p in trainer.phases] == ["train"]  # weights: none = from scratch, one phase
    result = trainer.fit(_checkpointer(trainer, tmp_path / "out"), StopRequest())
    assert np.isfinite(result.history["loss"][0])
    trainer.model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    pixels = trainer.dataset.test.images[:4]  # raw uint8 pixels: preprocessing is inside the model
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0),
                               trainer.model.predict(pixels, verbose=0), rtol=1e-4, atol=1e-5)
    assert reloaded.layers[-1].dtype_policy.name == "float32"


def test_backbone_model_exports_for_serving(tiny_folder, tmp_path):
    """The full export (model.keras + SavedModel) of a backbone model, reloaded, on raw pixels."""
    import tensorflow as tf

    from trainer.model.export import export_model, load_for_prediction

    cfg = _cfg(tiny_folder, tmp_path / "out", model="mobilenetv3small")
    trainer = _trainer(cfg)
    export_model(trainer.model, list(trainer.dataset.class_names), SIZE, cfg.model, tmp_path / "model")
    reloaded, classes, size = load_for_prediction(tmp_path / "model")
    assert size == SIZE and classes == ["class0", "class1", "class2"]
    pixels = trainer.dataset.test.images[:4]
    expected = trainer.model.predict(pixels, verbose=0)
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), expected, rtol=1e-4, atol=1e-5)
    served = tf.saved_model.load(str(tmp_path / "model" / "saved_model"))
    out = served.signatures["classify_pixels"](tf.constant(pixels, tf.float32))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_resnet50_preprocessing_is_caffe_style():
    import keras

    from trainer.model.build import build_model

    keras.mixed_precision.set_global_policy("float32")  # an earlier test may have left bfloat16
    model = build_model("resnet50", SIZE, 2)
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    out = np.asarray(model.get_layer("caffe_preprocess")(pixel))[0, 0, 0]
    np.testing.assert_allclose(out, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_weights_file_loads_the_same_backbone_and_mismatch_is_a_config_error(tiny_folder, tmp_path):
    from trainer.model.backbones import save_backbone_weights
    from trainer.model.build import build_model
    from trainer.model.weights import resolve

    first = build_model("mobilenetv3small", SIZE, 3)
    path = tmp_path / "mnv3.weights.h5"
    assert save_backbone_weights(first, path)
    cfg = _cfg(tiny_folder, tmp_path / "o", model="mobilenetv3small", weights=str(path))
    w = resolve(cfg, tmp_path / "scratch")
    assert (w.kind, w.path) == ("file", str(path)) and len(w.sha256) == 64
    assert "fine-tuned from weights" in w.describe(cfg.model)
    second = build_model("mobilenetv3small", SIZE, 3, w.path)
    images = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 3)).astype(np.uint8)
    np.testing.assert_allclose(_features(second, images), _features(first, images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="does not fit backbone 'efficientnetv2b0'") as err:
        build_model("efficientnetv2b0", SIZE, 3, w.path)
    assert "\n" not in str(err.value)
    # from scratch the moving statistics must keep up with a short run; pretrained keeps Keras'
    assert _bn_momenta(first) == {0.9} and _bn_momenta(second) == {0.999}


def _bn_momenta(model) -> set[float]:
    import keras

    from trainer.model.backbones import backbone_of

    return {layer.momentum for layer in backbone_of(model).layers
            if isinstance(layer, keras.layers.BatchNormalization)}


def test_missing_weights_file_exits_2_in_one_line(tiny_folder, tmp_path):
    proc = run_trainer(["--data", str(tiny_folder), "--output", str(tmp_path / "out"),
                        "--set", "model=mobilenetv3small", "--set", f"weights={tmp_path}/nope.weights.h5"], tmp_path)
    assert proc.returncode == EXIT_CONFIG
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: weights file") and "not found" in last


def _fake_weights(path: Path, content: bytes = b"not really weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_imagenet_resolution_order_cache_then_mirror_then_error(tmp_path, monkeypatch):
    from trainer.model.backbones import BACKBONES as SPECS
    from trainer.model.weights import resolve

    fname = SPECS["mobilenetv3small"].imagenet_file
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KUBETRAIN_NO_DOWNLOAD", "1")
    mirror = tmp_path / "mirror"
    _fake_weights(mirror / fname, b"mirror copy")
    cfg = load_config({"data": "/d", "output": "/o", "model": "mobilenetv3small", "weights_mirror": str(mirror)})
    assert cfg.weights == "imagenet"  # auto for a backbone

    w = resolve(cfg, tmp_path / "scratch")  # 1. not in the cache yet: the mirror
    assert w.kind == "imagenet" and "(weights_mirror)" in w.source and w.path == str(mirror / fname)
    _fake_weights(tmp_path / "keras" / "models" / fname, b"baked into the image")
    w = resolve(cfg, tmp_path / "scratch")  # 2. the cache wins over the mirror
    assert "(Keras cache)" in w.source and w.path == str(tmp_path / "keras" / "models" / fname)
    import hashlib

    assert w.sha256 == hashlib.sha256(b"baked into the image").hexdigest()
    (tmp_path / "keras" / "models" / fname).unlink()
    (mirror / fname).unlink()
    with pytest.raises(ConfigError) as err:  # 3. nothing, and no download allowed
        resolve(cfg, tmp_path / "scratch")
    message = str(err.value)
    assert "\n" not in message and "BACKBONES=mobilenetv3small" in message and "weights_mirror" in message


def test_no_weights_anywhere_exits_2_in_one_line(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KUBETRAIN_NO_DOWNLOAD", "1")
    proc = run_trainer(["--data", str(tiny_folder), "--output", str(tmp_path / "out"),
                        "--set", "model=mobilenetv3small"], tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: ImageNet weights for mobilenetv3small")


class _StopInFineTune:
    """A stop request that fires once the trainer is in its fine-tune phase."""

    reason = "test stop in phase 2"

    def __init__(self):
        self.trainer = None

    def __bool__(self):
        return self.trainer is not None and self.trainer.phase is not None and self.trainer.phase.name == "fine_tune"


def test_resume_in_fine_tune_phase_restores_trainable_layers(tiny_folder, tmp_path):
    from trainer.core.errors import Preempted
    from trainer.core.preemption import StopRequest
    from trainer.model.backbones import save_backbone_weights
    from trainer.model.build import build_model
    from trainer.model.schedule import find_backbone

    path = tmp_path / "pre.weights.h5"
    save_backbone_weights(build_model("mobilenetv3small", SIZE, 3), path)
    out = tmp_path / "out"
    cfg = _cfg(tiny_folder, out, model="mobilenetv3small", weights=str(path), epochs=2, head_epochs=1,
               fine_tune_layers=4, batch_size=8, steps_per_execution=1)
    first = _trainer(cfg)
    assert [p.name for p in first.phases] == ["head", "fine_tune"]
    head_trainable = {v.path for v in first.model.trainable_variables}
    assert all(not v.path.startswith(find_backbone(first.model).name) for v in first.model.trainable_variables)
    stop = _StopInFineTune()
    stop.trainer = first
    with pytest.raises(Preempted, match="epoch 2, step 1/"):
        first.fit(_checkpointer(first, out), stop)
    phase2 = {v.path for v in first.model.trainable_variables}
    assert head_trainable < phase2  # the head plus the top 4 backbone layers with weights
    backbone = find_backbone(first.model)
    weighted = [layer for layer in backbone.layers if layer.weights]
    expected = {v.path for layer in weighted[-4:] if layer.trainable for v in layer.trainable_weights}
    assert expected and phase2 - head_trainable == expected

    second = _trainer(cfg)
    assert {v.path for v in second.model.trainable_variables} == head_trainable  # built in phase 1
    result = second.fit(_checkpointer(second, out), StopRequest())
    assert result.resumed_from == (1, 1) and result.epochs_completed == 2
    assert {v.path for v in second.model.trainable_variables} == phase2
    marker = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert marker["epoch"] == 2


def test_fine_tuning_under_mirrored_strategy_with_mixed_precision(tiny_folder, tmp_path):
    """A pretrained backbone's head and fine-tune phases on 2 CPU replicas (MirroredStrategy), in
    the precision ``auto`` picks here (mixed_bfloat16 on a CPU with bf16 units): the run
    completes, and the exported model's head computes in float32 and gives probabilities."""
    import keras

    from trainer.model.backbones import save_backbone_weights
    from trainer.model.build import build_model

    weights = tmp_path / "pre.weights.h5"
    save_backbone_weights(build_model("mobilenetv3small", SIZE, 3), weights)
    out = tmp_path / "out"
    proc = run_trainer(["--data", str(tiny_folder), "--output", str(out), "--epochs", "2", "--cpu-replicas", "2",
                        "--set", "model=mobilenetv3small", "--set", f"image_size={SIZE}", "--set", "batch_size=4",
                        "--set", f"weights={weights}", "--set", "head_epochs=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "phase head: epochs 1-1" in proc.stderr and "phase fine_tune: epochs 2-2" in proc.stderr
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["epochs_completed"] == 2
    assert metrics["initial_weights"]["kind"] == "file" and np.isfinite(metrics["test_loss"])
    model = keras.saving.load_model(out / "model" / "model.keras")
    assert model.layers[-1].dtype_policy.name == "float32"
    assert model.layers[-1].compute_dtype == "float32"
    probs = model.predict(np.full((2, SIZE, SIZE, 3), 128, np.uint8), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(-1), 1.0, atol=1e-3)
    from trainer.model.schedule import find_backbone

    expected = {"mixed_bfloat16": "bfloat16", "float32": "float32"}[metrics["precision"]]
    body = {layer.compute_dtype for layer in find_backbone(model).layers if layer.weights}
    assert body == {expected}, body  # the backbone's layers in the run's precision
