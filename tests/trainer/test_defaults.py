"""Defaults that fit the data (trainer/config/auto.py), the phase plan and learning-rate schedule
(trainer/model/schedule.py) and best-epoch selection (trainer/training/best.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.data.scan import fit_to_data, scan

from .conftest import write_png


def _folder(root: Path, size: tuple[int, int], per_class: int = 3, mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            write_png(root / f"c{c}" / f"{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    return root


def test_small_glyphs_keep_their_native_size_and_no_flips(tmp_path):
    root = _folder(tmp_path / "glyphs", (28, 28))
    assert scan(root).size == 28
    cfg = load_config({"data": str(root), "output": str(tmp_path / "o")})
    resolved = fit_to_data(cfg, root)
    c = resolved.config
    assert c.image_size == 28
    assert c.augment.flip == "none" and 0 < c.augment.shift <= 0.05 and 0 < c.augment.rotation <= 0.05
    assert "native size" in c.auto_reasons["image_size"]
    assert set(resolved.reasons) >= {"image_size", "augment.flip", "augment.shift"}
    assert "warmup_epochs" in c.auto_reasons  # the config-only reasons are kept too


def test_large_photos_are_capped_per_model(tmp_path):
    root = _folder(tmp_path / "photos", (300, 200), mode="RGB")
    small = fit_to_data(load_config({"data": str(root), "output": "/tmp/o"}), root).config
    assert small.image_size == 64 and "capped at 64" in small.auto_reasons["image_size"]
    backbone = fit_to_data(load_config({"data": str(root), "output": "/tmp/o", "model": "mobilenetv3small"}),
                           root).config
    assert backbone.image_size == 200  # shorter side, below the backbone's 224 default
    assert backbone.weights == "imagenet" and backbone.head_epochs == 3


def test_values_set_by_the_user_are_kept(tmp_path):
    root = _folder(tmp_path / "g", (28, 28))
    cfg = load_config({"data": str(root), "output": "/tmp/o", "image_size": 48,
                       "augment": {"flip": "horizontal", "shift": 0.2}})
    resolved = fit_to_data(cfg, root)
    assert resolved.config.image_size == 48 and resolved.config.augment.flip == "horizontal"
    assert resolved.config.augment.shift == 0.2
    assert "image_size" not in resolved.reasons and "augment.flip" not in resolved.reasons


def test_tiny_images_get_no_geometric_jitter():
    cfg = load_config({"data": "builtin:digits", "output": "/tmp/o"})
    assert cfg.image_size == 16
    assert (cfg.augment.rotation, cfg.augment.shift, cfg.augment.zoom, cfg.augment.flip) == (0, 0, 0, "none")


@pytest.mark.parametrize("values, expected", [
    pytest.param({}, [("train", 0, 6, 1e-3, None)], id="scratch-one-phase"),
    pytest.param({"model": "resnet50", "weights": "none"}, [("train", 0, 6, 1e-3, None)], id="backbone-scratch"),
    pytest.param({"model": "resnet50"}, [("head", 0, 2, 1e-3, 0), ("fine_tune", 2, 4, 1e-4, None)],
                 id="pretrained-two-phases"),
    pytest.param({"model": "resnet50", "fine_tune_layers": 5, "head_epochs": 1},
                 [("head", 0, 1, 1e-3, 0), ("fine_tune", 1, 5, 1e-4, 5)], id="top-layers"),
    pytest.param({"model": "resnet50", "fine_tune_layers": 0}, [("head", 0, 6, 1e-3, 0)], id="never-unfreeze"),
    pytest.param({"model": "resnet50", "head_epochs": 0}, [("fine_tune", 0, 6, 1e-4, None)], id="no-head-phase"),
])
def test_phase_plan(values, expected):
    from trainer.model.schedule import plan

    cfg = load_config({"data": "builtin:digits", "output": "/tmp/o", "epochs": 6, **values})
    got = [(p.name, p.first_epoch, p.epochs, p.peak_lr, p.backbone_layers) for p in plan(cfg, has_backbone=True)]
    assert got == [(n, f, e, pytest.approx(lr), b) for n, f, e, lr, b in expected]


def test_learning_rate_warms_up_then_decays_in_each_phase():
    from trainer.model.schedule import learning_rate, plan

    cfg = load_config({"data": "builtin:digits", "output": "/tmp/o", "epochs": 6, "model": "resnet50",
                       "warmup_epochs": 1})
    phases = plan(cfg, has_backbone=True)  # head epochs 0-1 at 1e-3, fine-tune 2-5 at 1e-4
    lr = learning_rate(cfg, phases, steps_per_epoch=10)
    curve = np.array([float(lr(s)) for s in range(60)])
    assert curve[0] == pytest.approx(1e-4) and curve[9] == pytest.approx(1e-3)  # warmup over 10 steps
    assert np.all(np.diff(curve[:10]) > 0) and np.all(np.diff(curve[10:20]) < 0)
    assert curve[19] < 1e-4  # decayed by the end of the head phase
    assert curve[29] == pytest.approx(1e-4) and curve[20] == pytest.approx(1e-5)  # phase 2 warms up again
    assert curve[59] < 1e-6
    constant = learning_rate(load_config({"data": "builtin:digits", "output": "/tmp/o",
                                          "lr_schedule": "constant"}), plan(cfg, False), 10)
    assert [float(constant(s)) for s in (0, 5, 99)] == pytest.approx([1e-3] * 3)


def test_best_epoch_prefers_accuracy_then_loss_then_earlier():
    from trainer.training.best import best_epoch

    assert best_epoch({}) is None
    assert best_epoch({"val_accuracy": [0.9, 0.95, 0.93], "val_loss": [0.3, 0.2, 0.1]}) == 1
    assert best_epoch({"val_accuracy": [0.9, 0.95, 0.95], "val_loss": [0.3, 0.2, 0.1]}) == 2
    assert best_epoch({"val_accuracy": [0.95, 0.95], "val_loss": [0.2, 0.2]}) == 0
