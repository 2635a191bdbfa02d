"""``augment.flip: auto`` from the data: the mirror probe (trainer/data/mirror.py) and its rule
(trainer/config/auto.py ``flip_rule``) on digits, mirror-pair glyphs and real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.config.auto import MirrorProbe, flip_rule
from trainer.data import mirror
from trainer.data.scan import fit_to_data

from .conftest import write_png


def _photo_crops(root: Path, per_class: int = 150) -> Path:
    """Two classes of crops (40-200 px, resized to 48) of scikit-learn's two sample photographs
    (a temple in China, a flower): real photos, whose mirror images are the same scene."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for label, photo in zip(("china", "flower"), load_sample_images().images):
        for i in range(per_class):
            side = int(rng.integers(40, 200))
            top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
            crop = Image.fromarray(np.ascontiguousarray(photo[top:top + side, left:left + side])).resize((48, 48))
            write_png(root / label / f"{i}.png", np.asarray(crop))
    return root


def _cfg(root: Path, **kw):
    return load_config({"data": str(root), "output": "/tmp/unused", **kw})


def test_digits_mirror_images_are_other_shapes():
    from trainer.data.builtin import digits_arrays

    images, labels, _ = digits_arrays()
    probe = mirror.probe_arrays(images, labels)
    assert probe.accuracy > 0.9 and probe.grayscale
    assert probe.kept < 0.5, probe  # measured: 25%
    value, reason = flip_rule(probe, "")
    assert value == "none" and "other classes or shapes" in reason


def test_digits_folder_gets_no_flips_from_the_probe(digits_folder):
    resolved = fit_to_data(_cfg(digits_folder), digits_folder)
    assert resolved.config.augment.flip == "none"
    assert "mirror images" in resolved.reasons["augment.flip"]


def test_glyphs_whose_classes_are_mirror_pairs_get_no_flips(tmp_path):
    from bench.accuracy import make_glyphs

    make_glyphs(tmp_path, per_class=40)
    resolved = fit_to_data(_cfg(tmp_path), tmp_path)
    assert resolved.config.augment.flip == "none"
    assert "other classes or shapes" in resolved.reasons["augment.flip"]


def test_photos_get_horizontal_flips(tmp_path):
    root = _photo_crops(tmp_path / "photos")
    resolved = fit_to_data(_cfg(root), root)
    assert resolved.config.augment.flip == "horizontal"
    reason = resolved.config.auto_reasons["augment.flip"]
    assert "keep their class" in reason and "mirror images" in reason


def test_a_set_flip_is_not_probed(tmp_path, monkeypatch):
    root = _photo_crops(tmp_path / "photos", per_class=20)
    monkeypatch.setattr(mirror, "probe_files", lambda *a: pytest.fail("probed although flip was set"))
    resolved = fit_to_data(_cfg(root, augment={"flip": "vertical"}), root)
    assert resolved.config.augment.flip == "vertical" and "augment.flip" not in resolved.reasons


def test_the_probe_is_deterministic(tmp_path):
    root = _photo_crops(tmp_path / "photos", per_class=30)
    first, second = (fit_to_data(_cfg(root), root).reasons["augment.flip"] for _ in range(2))
    assert first == second


@pytest.mark.parametrize("probe, value, words", [
    (None, "none", "not probed"),
    (MirrorProbe(0.55, 0.56, 0.5, 300, grayscale=True), "none", "too weak to tell, and grey"),
    (MirrorProbe(0.55, 0.56, 0.5, 300, grayscale=False), "horizontal", "too weak to tell, and colour"),
    (MirrorProbe(0.90, 0.85, 0.1, 600, grayscale=False), "horizontal", "keep their class (94% kept)"),
    (MirrorProbe(0.90, 0.30, 0.1, 600, grayscale=False), "none", "other classes or shapes (25% kept)"),
], ids=["unprobed", "weak-grey", "weak-colour", "symmetric", "asymmetric"])
def test_flip_rule(probe, value, words):
    got, reason = flip_rule(probe, "not probed")
    assert got == value and words in reason and reason.startswith(value + ":")
