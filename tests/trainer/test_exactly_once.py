"""Exactly once, whatever the world size (#22): an epoch stopped and resumed any number of times,
each time with another global batch (workers x replicas x batch_size), by SIGTERM (the stop
step is checkpointed) or SIGKILL (the last periodic checkpoint survives, the steps after it are
lost), trains every image of that epoch exactly once in the lineage that survives.

Property tests over random datasets, batches and stop points through the real tf.data pipeline
(``pipeline.make_batches``) and the loop's own resume rule (``Trainer._images_done``), in
memory and on a packed stream; and one real run: 2 CPU replicas preempted mid-epoch, resumed
with 1."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from trainer.config import load_config
from trainer.data.dataset import Split, open_dataset
from trainer.data.pipeline import make_batches, make_source
from trainer.training.checkpoint import Position
from trainer.training.loop import Trainer

from .conftest import preempt_trainer, run_trainer
from .test_packed import cfg_for, folder, packed_dir  # noqa: F401 - fixtures

NO_AUGMENT = {"rotation": 0, "shift": 0, "zoom": 0, "flip": "none"}


def images_done(position: Position, n: int, global_batch: int) -> int:
    """The loop's own rule (Trainer._images_done) on a position saved at another batch."""
    fake = SimpleNamespace(global_batch=global_batch, dataset=SimpleNamespace(train=range(n)),
                           cfg=SimpleNamespace(batch_size=global_batch), runtime=SimpleNamespace(replicas=1))
    return Trainer._images_done(fake, position)


def lineage(rng: np.random.Generator, n: int, epoch_batches, ids_of, max_batch: int = 70) -> tuple[list, int]:
    """One epoch through random attempts: each has its own global batch and ends by SIGTERM,
    SIGKILL or at the epoch's end; returns the ids the surviving lineage trained on, and the
    number of stop points."""
    trained: list[int] = []
    position = Position(epoch=0, step=0)
    stops = 0
    while True:
        batch = int(rng.integers(1, max_batch))
        done = images_done(position, n, batch) if position.step else 0
        assert done == len(trained)
        batches = [ids_of(b) for b in epoch_batches(batch, done)]
        assert sum(len(b) for b in batches) == n - done  # the rest of the epoch, nothing more
        if len(batches) <= 1 or rng.random() < 0.1:
            return trained + [i for b in batches for i in b], stops
        stop = int(rng.integers(1, len(batches)))  # steps trained before the signal
        stops += 1
        if rng.random() < 0.5:  # SIGTERM: the stop step itself is checkpointed
            kept = stop
        else:  # SIGKILL: the last periodic checkpoint survives (or none: the epoch's start)
            kept = int(rng.integers(0, stop + 1))
        if kept:  # else nothing newer survives: the next attempt starts where the last one did
            trained += [i for b in batches[:kept] for i in b]
            position = Position(epoch=0, step=position.step + kept,
                                partial={"loss_sum": 0.0, "correct": 0.0, "count": float(len(trained))})


def test_every_image_once_in_memory_across_hundreds_of_stops_and_batches():
    rng = np.random.default_rng(2026)
    stops = 0
    for case in range(120):
        n = int(rng.integers(30, 300))
        cfg = load_config({"data": "builtin:digits", "output": "/tmp/unused", "image_size": 16,
                           "seed": int(rng.integers(0, 1000)), "augment": NO_AUGMENT})
        split = Split(labels=np.arange(n, dtype=np.int32), images=np.zeros((n, 16, 16, 3), np.uint8))
        source = make_source(split, cfg)
        epoch = int(rng.integers(0, 5))

        def epoch_batches(batch, done, source=source, n=n, cfg=cfg, epoch=epoch):
            return make_batches(source, n, cfg, batch, training=True, epoch=epoch, skip_examples=done)

        ids, k = lineage(rng, n, epoch_batches, lambda b: b[1].numpy().tolist())
        stops += k
        assert sorted(ids) == list(range(n)), f"case {case}: n={n}"
    assert stops >= 200  # a few hundred stop points in all


def test_every_image_once_on_a_packed_stream_across_stops_and_batches(packed_dir, tmp_path):  # noqa: F811
    rng = np.random.default_rng(7)
    cfg = cfg_for(packed_dir)
    ds = open_dataset(cfg, tmp_path / "scratch")
    source = make_source(ds.train, cfg)
    n = len(ds.train)

    def ids_of(batch) -> list[bytes]:  # each image by its pixels (random, so all distinct)
        return [image.tobytes() for image in batch[0].numpy()]

    every = {i for b in make_batches(source, n, cfg, 16, training=True, epoch=0) for i in ids_of(b)}
    assert len(every) == n

    stops = 0
    for case in range(10):
        epoch = case

        def epoch_batches(batch, done, epoch=epoch):
            return make_batches(source, n, cfg, batch, training=True, epoch=epoch, skip_examples=done)

        ids, k = lineage(rng, n, epoch_batches, ids_of, max_batch=20)
        stops += k
        assert len(ids) == n and set(ids) == every, f"epoch {epoch}"
    assert stops >= 20


@pytest.mark.timeout(900)
def test_a_run_preempted_on_two_replicas_resumes_on_one_mid_epoch(tmp_path):
    out = tmp_path / "out"
    args = ["--data", "builtin:digits", "--output", str(out), "--epochs", "3",
            "--set", "image_size=16", "--set", "model=seed_cnn", "--set", "batch_size=16",
            "--set", "steps_per_execution=1"]
    preempt_trainer([*args, "--set", "cpu_replicas=2"], tmp_path, out)
    marker = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert marker.get("step"), marker  # stopped mid-epoch
    resumed = run_trainer([*args, "--set", "cpu_replicas=1"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "its checkpoint was saved at another global batch" in resumed.stderr
    assert "this run's is 16 (16 x 1 replicas)" in resumed.stderr
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 3 and metrics["replicas"] == 1
