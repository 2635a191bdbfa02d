"""Promotion: a run's model reaches the serving location only when it beats the one there."""

from __future__ import annotations

import json

from .conftest import FAST, run_trainer


def _train(tmp_path, out, epochs, target, *extra):
    proc = run_trainer(["--data", "builtin:digits", "--output", str(out), "--epochs", str(epochs),
                        *FAST, "--set", f"promote_to={target}", *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report" / "metrics.json").read_text())


def test_promotes_first_then_only_a_better_model(tmp_path):
    serving = tmp_path / "serving"
    first = _train(tmp_path, tmp_path / "run1", 3, serving)
    assert first["promotion"]["promote"] is True
    assert first["promotion"]["reason"] == "no model there yet"
    promoted = json.loads((serving / "report" / "metrics.json").read_text())
    assert promoted["output"] == str(tmp_path / "run1")
    assert (serving / "model" / "model.keras").exists()

    # One epoch at a tiny learning rate: worse on the same test split, so not promoted.
    worse = _train(tmp_path, tmp_path / "run2", 1, serving, "--set", "learning_rate=0.00001")
    assert worse["promotion"]["promote"] is False
    assert worse["promotion"]["current_accuracy"] > worse["promotion"]["new_accuracy"]
    assert json.loads((serving / "report" / "metrics.json").read_text())["output"] == str(tmp_path / "run1")


def test_promote_to_needs_export(tmp_path):
    proc = run_trainer(["--data", "builtin:digits", "--output", str(tmp_path / "o"),
                        "--set", f"promote_to={tmp_path / 's'}", "--set", "export=false"], tmp_path)
    assert proc.returncode == 2
    assert "'promote_to' needs export: true" in proc.stderr
