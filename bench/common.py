"""Shared by the benchmark's parent and child processes: data, FLOP counts, small stats."""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

TARGET_ACCURACY = 0.97

# FLOPs to train the seed CNN on one 64x64x3 image (the figure). Convolutions and dense
# layers alone count 122.6 MFLOP (seed_cnn_train_flops below); biases, ReLU, pooling, softmax
# and the optimizer add the rest.
SEED_CNN_TRAIN_FLOPS = 123.6e6


def digits(image_size: int, train_limit: int = 0):
    """builtin:digits at ``image_size`` with the trainer's own splits (both sides get these arrays)."""
    from trainer.config import load_config
    from trainer.data.dataset import Dataset, Split, load_builtin

    cfg = load_config(overrides={"data": "builtin:digits", "output": tempfile.gettempdir(),
                                 "image_size": image_size})
    ds = load_builtin("digits", cfg)
    if train_limit and train_limit < len(ds.train):
        train = Split(labels=ds.train.labels[:train_limit], images=ds.train.images[:train_limit])
        ds = Dataset(ds.class_names, train, ds.val, ds.test, ds.description + f" (first {train_limit} train)")
    return ds


def conv_macs(out_hw: int, out_ch: int, k: int, in_ch: int) -> int:
    return out_hw * out_hw * out_ch * k * k * in_ch


def seed_cnn_train_flops(image_size: int = 64, num_classes: int = 10) -> float:
    """FLOPs to train on one image: forward MACs x 2 (multiply+add) x 3 (forward + two backward)."""
    c1 = image_size - 2
    p1 = c1 // 2
    c2 = p1 - 2
    p2 = c2 // 2
    macs = (conv_macs(c1, 32, 3, 3) + conv_macs(c2, 64, 3, 32)
            + p2 * p2 * 64 * 128 + 128 * num_classes)
    return 2.0 * 3.0 * macs


def summary(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
