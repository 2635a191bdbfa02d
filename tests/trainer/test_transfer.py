"""Transfer learning with no download: pretrain a backbone on one dataset, save its weights,
fine-tune from them on a different small dataset, and beat the same backbone trained from
scratch with the same epoch budget (the head / fine-tune phases of trainer/schedule.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.config import load_config

BACKBONE = "mobilenetv3small"
SIZE = 32


def _fit(values: dict, data_root: Path | None = None):
    from trainer.checkpoint import Checkpointer
    from trainer.data import load_dataset
    from trainer.devices import make_runtime
    from trainer.storage import LocalRunDir
    from trainer.train import StopRequest, Trainer

    cfg = load_config({"model": BACKBONE, "image_size": SIZE, "batch_size": 32, "steps_per_execution": 8,
                       **values})
    trainer = Trainer(cfg, make_runtime(cfg), load_dataset(cfg, data_root))
    trainer.fit(Checkpointer(LocalRunDir(cfg.output), trainer.model, trainer.optimizer, keep=1), StopRequest())
    return trainer


def _held_out_accuracy(trainer) -> float:
    val, test = trainer.evaluate("val", collect=True), trainer.evaluate("test", collect=True)
    labels = np.concatenate([val["labels"], test["labels"]])
    probs = np.concatenate([val["probs"], test["probs"]])
    return float((probs.argmax(-1) == labels).mean())


def test_fine_tuning_from_pretrained_weights_beats_scratch(tmp_path):
    from bench.accuracy import make_glyphs
    from trainer.backbones import save_backbone_weights

    # 1. pretrain on handwritten digits (builtin:digits), from scratch, and keep the backbone
    pre = _fit({"data": "builtin:digits", "output": str(tmp_path / "pre"), "weights": "none", "epochs": 4})
    weights = tmp_path / "digits-backbone.weights.h5"
    assert save_backbone_weights(pre.model, weights)

    # 2. a different, small dataset: 10 classes of generated stroke glyphs, 20 images each
    glyphs = tmp_path / "glyphs"
    make_glyphs(glyphs, per_class=20, seed=3)
    budget = {"data": str(glyphs), "epochs": 6, "val_fraction": 0.2, "test_fraction": 0.2}
    tuned = _fit({**budget, "output": str(tmp_path / "tuned"), "weights": str(weights)}, glyphs)
    assert [p.name for p in tuned.phases] == ["head", "fine_tune"]
    scratch = _fit({**budget, "output": str(tmp_path / "scratch"), "weights": "none"}, glyphs)

    tuned_acc, scratch_acc = _held_out_accuracy(tuned), _held_out_accuracy(scratch)
    print(f"held-out accuracy: fine-tuned from digits {tuned_acc:.3f}, from scratch {scratch_acc:.3f}")
    assert tuned_acc > scratch_acc + 0.1
