"""Batch-norm statistics recomputed from the final weights (trainer/training/batchnorm.py): a model tests
as it trains, whatever the number of steps, replicas, workers or restarts.

The CLI runs are the issue's: 3 epochs of builtin:digits at a global batch of 128 (36 steps),
which before the recomputation trained to 97% and tested at 27-33%.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.runtime.workers import on_this_machine
from trainer.training.batchnorm import sample_plan

from .conftest import REPO, preempt_trainer, run_trainer

SHORT = ["--data", "builtin:digits", "--epochs", "3", "--set", "export=false"]  # resnet_small: batch norm
ONE_POINT = 0.01


def _train_and_test(out: Path) -> tuple[float, float]:
    """(training accuracy of the exported epoch, test accuracy) of a finished run."""
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["model"] == "resnet_small"
    return metrics["history"]["accuracy"][metrics["selected_epoch"] - 1], metrics["test_accuracy"]


@pytest.mark.parametrize(
    "num_examples, per_replica, replicas, expected",
    [
        (1437, 128, 1, (128, 4)),  # 512 images: 4 whole batches
        (1437, 64, 2, (128, 4)),
        (300, 128, 1, (128, 2)),  # fewer images than the sample: all whole batches
        (100, 128, 2, (100, 1)),  # smaller than one batch: one batch of what there is
        (3, 64, 2, (0, 0)),  # 1 image per replica: no statistics
    ],
    ids=["one-replica", "two-replicas", "small-split", "smaller-than-a-batch", "too-few"],
)
def test_sample_plan(num_examples, per_replica, replicas, expected):
    assert sample_plan(num_examples, per_replica, replicas) == expected


_REPLICAS_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from trainer.training.batchnorm import BatchNormStats
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(inputs)
    x = keras.layers.Dropout(0.9)(x)
    outputs = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    model = keras.Model(inputs, outputs)
rng = np.random.default_rng(0)
images = (rng.normal(3.0, 2.0, (64, 4)) * np.arange(1, 5)).astype(np.float32)
batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(64, np.int32))).batch(16, drop_remainder=True)
used = BatchNormStats(model, strategy).recompute(batches, 4)
# each global batch of 16 is split 8 + 8 over the replicas: 8 per-replica batches of 8 images
shards = images.reshape(8, 8, 4)
out = {"used": used, "expected_mean": shards.mean(1).mean(0).tolist(), "expected_var": shards.var(1).mean(0).tolist()}
for name in ("bn1", "bn2"):
    layer = model.get_layer(name)
    out[name] = {"momentum": layer.momentum,
                 "mean": [v.numpy().tolist() for v in layer.moving_mean.value.values],
                 "var": [v.numpy().tolist() for v in layer.moving_variance.value.values]}
print(json.dumps(out))
"""


def test_recomputed_statistics_are_the_mean_batch_statistics_on_every_replica(tmp_path):
    import numpy as np

    proc = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["used"] == 64
    bn1, bn2 = out["bn1"], out["bn2"]
    for replica in range(2):  # both replicas hold the same statistics: those of all 8 batches
        np.testing.assert_allclose(bn1["mean"][replica], out["expected_mean"], rtol=1e-5)
        np.testing.assert_allclose(bn1["var"][replica], out["expected_var"], rtol=1e-4)
        # bn2 normalizes bn1's output: mean 0, variance 1 (x var/(var+eps)) with dropout off;
        # with dropout at 0.9 still on, its variance would be ~10.
        np.testing.assert_allclose(bn2["mean"][replica], 0.0, atol=1e-5)
        np.testing.assert_allclose(bn2["var"][replica], 1.0, atol=0.01)
    assert bn1["momentum"] == bn2["momentum"] == 0.9  # restored after the pass


@pytest.mark.parametrize("momentum, steps, biased", [(0.9, 36, True), (0.9, 65, True), (0.9, 66, False),
                                                     (0.99, 600, True)])
def test_moving_averages_are_biased_while_they_hold_their_initial_values(momentum, steps, biased):
    import keras

    from trainer.training.batchnorm import BatchNormStats

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=momentum)(inputs))
    stats = BatchNormStats(model, None)
    assert stats.moving_averages_biased(steps) is biased
    # the final recomputation: when biased, with replicas, an earlier epoch or a constant rate
    assert stats.final_recompute_needed(steps, 1, True, True) is biased
    assert stats.final_recompute_needed(steps, 2, True, True)
    assert stats.final_recompute_needed(steps, 1, False, True)
    assert stats.final_recompute_needed(steps, 1, True, False)
    model.layers[-1].trainable = False  # frozen (a pretrained backbone's): never recomputed
    assert stats.moving_averages_biased(steps) is False
    assert stats.final_recompute_needed(steps, 2, False, False) is False


def test_validation_sees_the_moving_averages_without_their_initial_values():
    import keras
    import numpy as np

    from trainer.training.batchnorm import BatchNormStats

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    layer = model.layers[-1]
    true_mean, true_var = np.array([5.0, -2.0, 0.5]), np.array([0.01, 4.0, 0.2])
    for _ in range(36):  # what 36 training steps on batches with these statistics leave
        layer.moving_mean.assign(layer.moving_mean.numpy() * 0.9 + true_mean * 0.1)
        layer.moving_variance.assign(layer.moving_variance.numpy() * 0.9 + true_var * 0.1)
    stale = layer.moving_variance.numpy().copy()
    assert stale[0] > 3 * true_var[0]  # the 3.3x
    with BatchNormStats(model, None).debiased(36):
        np.testing.assert_allclose(layer.moving_mean.numpy(), true_mean, rtol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), true_var, rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(), stale)  # put back for training


def test_short_large_batch_run_tests_as_it_trains(tmp_path):
    out = tmp_path / "run"
    proc = run_trainer([*SHORT, "--batch-size", "128", "--output", str(out)], tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train, test = _train_and_test(out)
    assert train > 0.9, train  # it did learn in 36 steps
    assert abs(test - train) <= ONE_POINT, (train, test)
    val = json.loads((out / "report" / "metrics.json").read_text())["history"]["val_accuracy"]
    assert min(val) > 0.85, val  # validation too (it was 18-28% with the stale averages)


def test_two_replicas_preempted_and_resumed_test_as_they_train(tmp_path):
    out = tmp_path / "run"
    args = [*SHORT, "--batch-size", "64", "--cpu-replicas", "2", "--set", "steps_per_execution=1",
            "--output", str(out)]
    preempt_trainer(args, tmp_path, out)
    proc = run_trainer(args, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["resumed_from"] is not None
    train, test = _train_and_test(out)
    assert train > 0.9, train
    assert abs(test - train) <= ONE_POINT, (train, test)


@pytest.mark.slow
def test_two_workers_short_run_tests_as_it_trains(tmp_path):
    out = tmp_path / "run"
    procs = []
    for i, worker in enumerate(on_this_machine(2)):
        env = {**os.environ, "TF_CONFIG": worker.tf_config(), "TF_CPP_MIN_LOG_LEVEL": "2",
               "KUBETRAIN_SCRATCH": str(tmp_path / f"scratch-{i}")}
        log = open(tmp_path / f"worker-{i}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "trainer", *SHORT, "--batch-size", "64", "--output", str(out)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in procs]
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))
    assert codes == [0, 0], logs
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["global_batch_size"] == 128
    train, test = _train_and_test(out)
    assert train > 0.9, train
    assert abs(test - train) <= ONE_POINT, (train, test)
    # worker 1 evaluated the test split with the same statistics as worker 0
    assert f"test accuracy {test:.4f}" in (tmp_path / "worker-1.log").read_text(), logs
