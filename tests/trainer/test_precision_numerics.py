"""Numerical guard for the per-machine precision choice: mixed_bfloat16 learns what float32 learns.

The same seed, data and recipe (seed CNN, digits at 16x16, 3 epochs) in float32 and in
mixed_bfloat16 must reach the same test accuracy within TOLERANCE (the test split has 179
images, so 0.03 is 5 images), with the loss computed in float32 and a float32 softmax head.
"""

from __future__ import annotations

import numpy as np

from trainer.config import load_config

TOLERANCE = 0.03


def _train(tmp_path, precision: str):
    import keras

    from trainer.core.preemption import StopRequest
    from trainer.data.dataset import load_dataset
    from trainer.runtime.devices import make_runtime
    from trainer.storage import LocalRunDir
    from trainer.training.checkpoint import Checkpointer
    from trainer.training.loop import Trainer

    out = tmp_path / precision
    cfg = load_config({"data": "builtin:digits", "output": str(out), "model": "seed_cnn", "epochs": 3,
                       "batch_size": 32, "image_size": 16, "precision": precision})
    try:
        runtime = make_runtime(cfg)
        trainer = Trainer(cfg, runtime, load_dataset(cfg, None))
        trainer.fit(Checkpointer(LocalRunDir(str(out)), trainer.model, trainer.optimizer, keep=1), StopRequest())
        test = trainer.evaluate("test", collect=True)
        return trainer, test
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bf16_reaches_float32_accuracy_with_the_same_seed(tmp_path):
    _, f32 = _train(tmp_path, "float32")
    bf16_trainer, bf16 = _train(tmp_path, "mixed_bfloat16")

    assert bf16_trainer.model.compute_dtype == "bfloat16"
    assert bf16_trainer.model.layers[-1].compute_dtype == "float32"  # softmax head in float32
    assert bf16_trainer.model.trainable_variables[0].dtype == "float32"  # float32 master weights
    assert bf16["probs"].dtype == np.float32
    assert np.allclose(bf16["probs"].sum(-1), 1.0, atol=1e-3)
    assert f32["accuracy"] > 0.8 and bf16["accuracy"] > 0.8  # it learns (0.88 seen)
    assert abs(bf16["accuracy"] - f32["accuracy"]) <= TOLERANCE, (f32["accuracy"], bf16["accuracy"])
    assert abs(bf16["loss"] - f32["loss"]) <= 0.1, (f32["loss"], bf16["loss"])
