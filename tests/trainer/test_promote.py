"""Promotion: a run's model reaches the serving location only when it is better than the served
one on images neither trained on, by more than noise, without sacrificing a class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from trainer import promote, promotions
from trainer.config import load_config
from trainer.data.dataset import never_trained_on, split_files, split_rule

from .conftest import FAST, REPO, run_trainer


def _train(tmp_path, data, out, epochs, target, *extra):
    proc = run_trainer(["--data", str(data), "--output", str(out), "--epochs", str(epochs),
                        *FAST, "--set", f"promote_to={target}", *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report" / "metrics.json").read_text())


def test_promotes_first_then_only_a_better_model(tmp_path):
    serving = tmp_path / "serving"
    first = _train(tmp_path, "builtin:digits", tmp_path / "run1", 3, serving)
    assert first["promotion"]["promote"] is True
    assert first["promotion"]["reason"] == "no model there yet"
    promoted = json.loads((serving / "report" / "metrics.json").read_text())
    assert promoted["output"] == str(tmp_path / "run1")
    assert (serving / "model" / "model.keras").exists()
    record = json.loads((serving / "model" / "evaluation.json").read_text())
    assert len(record["test_keys"]) == first["num_test_images"]

    # One epoch at a tiny learning rate: worse on the same test split, so not promoted.
    worse = _train(tmp_path, "builtin:digits", tmp_path / "run2", 1, serving, "--set", "learning_rate=0.00001")
    assert worse["promotion"]["promote"] is False
    assert worse["promotion"]["current_accuracy"] > worse["promotion"]["new_accuracy"]
    assert worse["promotion"]["comparison"]["fair"] is True
    assert worse["promotion"]["comparison"]["num_images"] == first["num_test_images"]
    assert json.loads((serving / "report" / "metrics.json").read_text())["output"] == str(tmp_path / "run1")
    html = (tmp_path / "run2" / "report" / "report.html").read_text()
    assert "vs the served model" in html and "new minus served" in html


def test_promote_to_needs_export(tmp_path):
    proc = run_trainer(["--data", "builtin:digits", "--output", str(tmp_path / "o"),
                        "--set", f"promote_to={tmp_path / 's'}", "--set", "export=false"], tmp_path)
    assert proc.returncode == 2
    assert "'promote_to' needs export: true" in proc.stderr


def test_nightly_on_a_growing_dataset_is_fair(digits_folder, tmp_path):
    """Night 1 trains on a third of the images; night 2 on all of them (new images arrived):
    the better night-2 model is promoted, compared on images the served model never trained
    on; night 3, an equal model (same data, a slightly different learning rate), is not."""
    night1 = tmp_path / "night1-data"
    for cls in sorted(p for p in digits_folder.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir())[::3]:
            (night1 / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, night1 / cls.name / f.name)
    serving = tmp_path / "serving"
    first = _train(tmp_path, night1, tmp_path / "n1", 1, serving)
    assert first["promotion"]["promote"] is True

    second = _train(tmp_path, digits_folder, tmp_path / "n2", 4, serving,
                    "--set", "promotion_max_recall_drop=0.2")
    p = second["promotion"]
    # Independently: what the served model trained or validated on, and night 2's test split.
    cfg = load_config({"data": str(night1), "output": "/x", "image_size": 16})
    _, served_splits = split_files(night1, cfg)
    seen = {f.relative_to(night1).as_posix() for s in ("train", "val") for f in served_splits[s][0]}
    _, splits2 = split_files(digits_folder, cfg)
    test2 = {f.relative_to(digits_folder).as_posix() for f in splits2["test"][0]}
    unseen = test2 - seen
    assert p["comparison"]["fair"] is True
    assert p["comparison"]["num_images"] == len(unseen) > 100
    assert p["comparison"]["fingerprint"] == promote.fingerprint(unseen)  # never its own training images
    assert p["promote"] is True, p["reason"]
    assert p["mcnemar"]["p_value"] < 0.05 and p["new_accuracy"] > p["current_accuracy"]
    assert json.loads((serving / "report" / "metrics.json").read_text())["output"] == str(tmp_path / "n2")

    third = _train(tmp_path, digits_folder, tmp_path / "n3", 4, serving,
                   "--set", "promotion_max_recall_drop=0.2", "--set", "learning_rate=0.0011")
    p3 = third["promotion"]
    assert p3["promote"] is False, p3["reason"]
    assert p3["mcnemar"]["p_value"] >= 0.05
    assert json.loads((serving / "report" / "metrics.json").read_text())["output"] == str(tmp_path / "n2")


# -- the pure parts ---------------------------------------------------------------------------


def test_mcnemar_counts_only_discordant_images():
    new_ok = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1], bool)
    old_ok = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    t = promote.mcnemar(new_ok, old_ok)
    assert (t["only_new_right"], t["only_served_right"], t["discordant"]) == (7, 1, 8)
    assert t["p_value"] == pytest.approx(9 / 256)  # P(X >= 7), X ~ Binomial(8, 1/2)
    equal = promote.mcnemar(np.ones(50, bool), np.ones(50, bool))
    assert equal["p_value"] == 1.0


@pytest.mark.parametrize("new_p, promoted, reason", [
    pytest.param([0] * 20 + [1] * 20, True, "significantly better", id="better"),
    pytest.param([0] * 20 + [1] * 2 + [0] * 18, False, "not significantly better", id="equal"),
    pytest.param([0] * 30 + [1] * 10, False, "recall drops by more than 0.1 for class 'a'",
                 id="class-dropped"),
])
def test_judge_needs_significance_and_no_class_dropped(new_p, promoted, reason):
    y = np.array([0] * 20 + [1] * 20)
    old_p = np.array([0] * 20 + [0] * 20)  # the served model never predicts class b
    if reason.startswith("recall"):
        y = np.array([0] * 30 + [1] * 10)
        old_p = np.array([0] * 30 + [0] * 10)
        new_p = [0] * 26 + [1] * 4 + [1] * 10  # b found, but 4 of 30 a's lost
    verdict = promote.judge(y, np.array(new_p), old_p, ["a", "b"], alpha=0.05, max_recall_drop=0.1)
    assert verdict["promote"] is promoted
    assert verdict["reason"].startswith(reason) or reason in verdict["reason"]


def test_images_the_served_model_trained_on_are_left_out():
    cfg = load_config({"data": "/d", "output": "/o", "test_fraction": 0.2, "seed": 7})
    rule = split_rule(cfg, have_val=False, have_test=False)
    keys = tuple(f"c{i % 3}/{i}.png" for i in range(300))
    in_test = [never_trained_on(k, rule) for k in keys]
    assert 30 < sum(in_test) < 90
    record = {"split_rule": rule, "test_keys": []}
    mask, info = promote.comparison_mask(keys, record)
    assert list(mask) == in_test and info["fair"] is True
    _, unknown = promote.comparison_mask(keys, None)
    assert unknown["fair"] is False
    folders = split_rule(cfg, have_val=True, have_test=True)
    assert never_trained_on("test/c0/1.png", folders) is True
    assert never_trained_on("train/c0/1.png", folders) is False
    assert never_trained_on("val/c0/1.png", folders) is False


def test_a_night_with_nothing_new_is_skipped_before_training(digits_folder, tmp_path):
    """The same images and the same recipe as the served model: the run ends before training
    (exit 0), says why, is recorded as skipped in its run directory and the history, and jobs
    runs shows it; a changed image, or skip_unchanged: false, trains."""
    serving = tmp_path / "serving"
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    assert _train(tmp_path, data, tmp_path / "runs" / "n1", 1, serving)["promotion"]["promote"] is True

    proc = run_trainer(["--data", str(data), "--output", str(tmp_path / "runs" / "n2"), "--epochs", "1",
                        *FAST, "--set", f"promote_to={serving}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing new: the dataset (sha256:" in proc.stderr and "skip_unchanged: false" in proc.stderr
    n2 = tmp_path / "runs" / "n2"
    skipped = json.loads((n2 / "skipped.json").read_text())
    assert skipped["state"] == "skipped" and skipped["promote_to"] == str(serving)
    assert not (n2 / "report").exists() and not (n2 / "checkpoints" / "latest.json").exists()
    assert "training epoch" not in proc.stderr.lower() and "Epoch 1" not in proc.stderr
    history, _ = promotions.read_history(str(serving))
    assert [e["decision"] for e in history] == ["promoted", "skipped"]
    shown = subprocess.run([sys.executable, "-m", "jobs", "runs", str(tmp_path / "runs"), "--no-html"],
                           cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert any(line.split()[:1] == ["n2"] and "skipped" in line for line in shown.splitlines()), shown

    forced = _train(tmp_path, data, tmp_path / "runs" / "n3", 1, serving, "--set", "skip_unchanged=false")
    assert forced["epochs_completed"] == 1 and "promotion" in forced
    # One image more, a new night: trained (and compared).
    first = min((data / "3").iterdir())
    shutil.copy(first, data / "3" / f"new-{first.name}")
    changed = _train(tmp_path, data, tmp_path / "runs" / "n4", 1, serving)
    assert changed["epochs_completed"] == 1
