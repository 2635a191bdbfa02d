"""The run's visibility outputs, on a real run preempted once and resumed: TensorBoard events
(read back with TensorFlow's own reader) with the expected tags, progress.json through every
state, and metrics.json's cost facts counting the attempt and the preemption."""

from __future__ import annotations

import collections
import json

from tests.trainer.conftest import FAST, preempt_trainer, run_trainer
from trainer.training import events, progress


def read_events(directory) -> collections.Counter:
    """(tag, plugin) -> number of values, over every event file (one per attempt)."""
    import tensorflow as tf

    seen: collections.Counter = collections.Counter()
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                seen[(value.tag, value.metadata.plugin_data.plugin_name)] += 1
    return seen


def test_preempted_then_resumed_run_keeps_events_progress_and_cost(tmp_path):
    out = tmp_path / "out"
    args = ["--data", "builtin:digits", "--output", str(out), "--epochs", "3", *FAST,
            "--set", "steps_per_execution=1"]
    preempt_trainer(args, tmp_path, out)
    record = json.loads((out / progress.FILE).read_text())
    assert (record["state"], record["attempt"], record["preemptions"]) == ("preempted", 1, 1)
    assert record["epoch"] >= 1 and record["epochs"] == 3 and record["val_accuracy"] > 0
    assert list((out / events.DIR).glob("events.out.tfevents.*")), "events pushed at the checkpoint"

    again = run_trainer(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((out / progress.FILE).read_text())
    assert record["state"] == "finished" and record["attempt"] == 2 and record["epoch"] == 3
    assert record["started"] <= record["updated"] and record["eta_seconds"] == 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert record["test_accuracy"] == metrics["test_accuracy"]
    cost = metrics["cost"]
    assert (cost["device"], cost["device_count"], cost["attempts"], cost["preemptions_survived"]) == \
        ("cpu", 1, 2, 1)
    assert cost["gpu_hours"] == 0 and cost["wall_seconds"] >= cost["train_seconds"] > 0

    seen = read_events(out / events.DIR)
    for tag in events.STEP_TAGS + events.EPOCH_TAGS:
        assert seen[(tag, "scalars")] >= 1, (tag, seen)
    assert seen[("epoch/val_accuracy", "scalars")] >= 3  # every epoch (one may repeat on resume)
    for tag in events.IMAGE_TAGS:
        assert seen[(tag, "images")] == 1, tag


def test_step_scalars_are_written_at_most_once_a_second_and_at_each_epoch_end(tmp_path):
    from trainer.storage import LocalRunDir
    from trainer.training.observer import STEP_EVERY_SECONDS, RunObserver

    t = [0.0]
    obs = RunObserver(LocalRunDir(str(tmp_path)), epochs=2, steps_per_epoch=100, global_batch=10,
                      learning_rate=lambda: 0.5, clock=lambda: t[0])
    for epoch in range(2):
        for step in range(10, 101, 10):  # 10 chunks of 10 steps, 0.25 s each
            t[0] += STEP_EVERY_SECONDS / 4
            obs.chunk(epoch, step, 10, [20.0, 50.0, 100.0])
        obs.epoch(epoch + 1, {"loss": 0.2, "val_accuracy": 0.5, "images_per_second": 400.0})
    obs.events.close()
    steps = []
    import tensorflow as tf

    for path in sorted((tmp_path / events.DIR).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "train/images_per_second":
                    steps.append((event.step, round(float(tf.make_ndarray(value.tensor)))))
    # per epoch: the first chunk (tracing) is skipped, then a point every 4 chunks, then the end
    assert steps == [(50, 400), (90, 400), (100, 400), (150, 400), (190, 400), (200, 400)]
    record = json.loads((tmp_path / progress.FILE).read_text())
    assert record["epoch"] == 2 and record["val_accuracy"] == 0.5
