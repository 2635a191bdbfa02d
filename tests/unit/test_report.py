"""Unit tests for trainer/report/: metrics by hand, and every report file on realistic cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import report
from trainer.report import build_metrics, pick_examples, plots, write_report

PNGS = (report.CURVES_FILE, report.CONFUSION_FILE, report.CONFUSION_NORMALIZED_FILE,
        report.PREDICTIONS_FILE)

# 3 classes, 6 test images; confusion matrix (rows true): cat [2 1 0], dog [0 1 1], bird [0 0 1]
NAMES = ["cat", "dog", "bird"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def small_metrics(**overrides):
    kwargs = {"class_names": NAMES, "y_true": Y_TRUE, "y_pred": Y_PRED, "test_loss": 0.75,
                  "history": {"loss": [1.0, 0.5], "accuracy": [0.5, 0.75]}, "epochs_completed": 2}
    kwargs.update(overrides)
    return build_metrics(**kwargs)


def test_metrics_hand_checked():
    m = small_metrics()
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    assert m["test_loss"] == 0.75
    assert m["num_test_images"] == 6
    assert m["epochs_completed"] == 2
    assert m["class_names"] == NAMES
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    expected = {
        "cat": (1.0, 2 / 3, 0.8, 3),
        "dog": (0.5, 0.5, 0.5, 2),
        "bird": (0.5, 1.0, 2 / 3, 1),
    }
    assert list(m["per_class"]) == NAMES
    for name, (p, r, f, s) in expected.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f)), name
        assert got["support"] == s and isinstance(got["support"], int)
    assert m["macro_avg"] == pytest.approx(
        {"precision": 2 / 3, "recall": 13 / 18, "f1": (0.8 + 0.5 + 2 / 3) / 3})
    assert m["weighted_avg"] == pytest.approx(
        {"precision": 0.75, "recall": 4 / 6, "f1": (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6})
    assert m["history"] == {"loss": [1.0, 0.5], "accuracy": [0.5, 0.75]}


def test_metrics_are_json_safe_and_extra_is_merged():
    m = small_metrics(
        y_true=Y_TRUE.astype(np.int32),
        test_loss=np.float32(0.5),
        history={"loss": [np.float32(1.0), float("nan")], "learning_rate": np.array([1e-3, 5e-4])},
        extra={"model": "seed_cnn", "replicas": np.int64(2), "images_per_second": np.float64(812.5),
               "dataset": {"name": "digits", "splits": (1437, 180, 180)}, "wall_seconds": float("inf")},
    )
    text = json.dumps(m, allow_nan=False)  # plain types only, no NaN/inf
    again = json.loads(text)
    assert again["history"] == {"loss": [1.0, None], "learning_rate": [1e-3, 5e-4]}
    assert again["replicas"] == 2 and again["model"] == "seed_cnn"
    assert again["dataset"] == {"name": "digits", "splits": [1437, 180, 180]}
    assert again["wall_seconds"] is None
    assert again["test_loss"] == 0.5


def test_extra_cannot_replace_computed_metrics(caplog):
    m = small_metrics(extra={"test_accuracy": 0.99, "model": "x"})
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    assert m["model"] == "x"
    assert "ignoring extra['test_accuracy']" in caplog.text


def test_class_absent_from_test_split_gets_a_zero_row():
    m = small_metrics(class_names=NAMES + ["fish"])
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class"]["fish"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # the macro average counts the absent class (sklearn, labels=range(n), zero_division=0)
    assert m["macro_avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1.0 + 0.0) / 4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_pred": np.array([0, 0, 1, 1, 2, 3])}, "outside 0..2"),
        ({"y_true": np.array([-1, 0, 0, 1, 1, 2])}, "outside 0..2"),
        ({"y_pred": np.array([0, 1])}, "6 labels but y_pred has 2"),
        ({"y_true": np.array([], dtype=int), "y_pred": np.array([], dtype=int)}, "empty"),
        ({"class_names": []}, "class_names is empty"),
        ({"y_pred": np.array([0.5, 0, 1, 1, 2, 2])}, "integers"),
    ],
    ids=["pred-out-of-range", "negative-true", "length-mismatch", "empty-test-set", "no-classes",
         "fractional-labels"],
)
def test_bad_inputs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_metrics(**overrides)


@pytest.mark.parametrize(
    "y_true, y_pred, shown, wrong_shown, phrase",
    [
        ([0] * 40, [0] * 40, 25, 0, "the first 25 of 40 test images (all classified correctly)"),
        ([0] * 40, [1] * 40, 25, 25, "all misclassified"),
        ([0] * 40, [1] * 3 + [0] * 37, 25, 3, "the first 22 correctly classified and the first 3"),
        ([0] * 40, [1] * 20 + [0] * 20, 25, 8, "the first 17 correctly classified and the first 8"),
        ([0] * 40, [1] * 36 + [0] * 4, 25, 21, "the first 4 correctly classified and the first 21"),
        ([0, 1, 2], [0, 2, 2], 3, 1, "(1 of 3 misclassified in all)"),
    ],
    ids=["no-mistakes", "all-wrong", "few-mistakes", "many-mistakes-capped-at-a-third",
         "few-correct", "three-images"],
)
def test_pick_examples(y_true, y_pred, shown, wrong_shown, phrase):
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    chosen, how = pick_examples(y_true, y_pred)
    assert len(chosen) == shown == len(set(chosen.tolist()))
    assert list(chosen) == sorted(chosen)
    assert int((y_true[chosen] != y_pred[chosen]).sum()) == wrong_shown
    assert phrase in how
    assert pick_examples(y_true, y_pred)[0].tolist() == chosen.tolist()  # deterministic


# ---------------------------------------------------------------- full reports


def _digits(n_images: int, rgb: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits upscaled to 32x32 (x3 channels): uint8, or float gray in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images[:n_images] / 16.0, np.ones((4, 4)))
    if rgb:
        return (np.repeat(x[..., None], 3, axis=-1) * 255).astype(np.uint8), d.target[:n_images]
    return x[..., None].astype(np.float32), d.target[:n_images]


def _fake_probs(y: np.ndarray, n_classes: int, seed: int = 0, margin: float = 3.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (len(y), n_classes))
    logits[np.arange(len(y)), y] += margin
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _history(epochs: int, with_val: bool = True) -> dict[str, list[float]]:
    e = np.arange(1, epochs + 1)
    h = {"loss": list(2.3 * np.exp(-e / 2.5) + 0.05), "accuracy": list(1 - 0.9 * np.exp(-e / 2)),
         "learning_rate": [1e-3] * epochs, "epoch_seconds": [3.2] * epochs,
         "images_per_second": [1010.0] * epochs}
    if with_val:
        h["val_loss"] = list(2.2 * np.exp(-e / 3) + 0.12)
        h["val_accuracy"] = list(1 - 0.88 * np.exp(-e / 2.4) - 0.03)
    return h


def _case(name: str):
    """(class_names, images, y_true, probs, history, config) for one named scenario."""
    if name == "digits-10-epochs":
        images, y = _digits(300)
        return ([str(i) for i in range(10)], images, y, _fake_probs(y, 10), _history(10),
                {"model": "seed_cnn", "data": "builtin:digits", "epochs": 10})
    if name == "one-epoch-float-gray":
        images, y = _digits(40, rgb=False)
        return ([str(i) for i in range(10)], images, y, _fake_probs(y, 10, margin=1.0), _history(1),
                {"model": "seed_cnn", "data": "builtin:digits", "epochs": 1})
    if name == "absent-class-no-val":
        images, y = _digits(60)
        names = [f"digit_{i}" for i in range(10)] + ["unused"]
        return (names, images, y, _fake_probs(y, 11), _history(3, with_val=False),
                {"model": "resnet_small", "data": "/data/digits"})
    if name == "three-images":
        images, y = _digits(3)
        return ([str(i) for i in range(10)], images, y, _fake_probs(y, 10), _history(2), {})
    if name == "40-classes-long-names":
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (200, 24, 24, 3), dtype=np.uint8)
        y = rng.integers(0, 40, 200)
        names = [f"species_{i:02d}_" + "x" * (i % 12) for i in range(40)]
        return (names, images, y, _fake_probs(y, 40, margin=2.5), _history(5),
                {"model": "resnet_small", "data": "gs://bucket/plants"})
    raise KeyError(name)


CASES = ["digits-10-epochs", "one-epoch-float-gray", "absent-class-no-val", "three-images",
         "40-classes-long-names"]


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_write_report(tmp_path: Path, case: str):
    names, images, y, probs, history, config = _case(case)
    config = {**config, "note": "<script>alert(1)</script>"}
    y_pred = probs.argmax(axis=1)
    metrics = build_metrics(class_names=names, y_true=y, y_pred=y_pred, test_loss=0.3125,
                            history=history, epochs_completed=len(history["loss"]),
                            extra={"model": config.get("model", "seed_cnn"), "replicas": 2})
    out = tmp_path / "report"
    write_report(out, metrics=metrics, images=images, probs=probs, y_true=y, config=config)

    on_disk = json.loads((out / report.METRICS_FILE).read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert np.asarray(on_disk["confusion_matrix"]).shape == (len(names), len(names))
    assert on_disk["test_accuracy"] == pytest.approx(float(np.mean(y == y_pred)))

    for png in PNGS:
        with Image.open(out / png) as im:
            im.load()
            assert im.format == "PNG"
            width, height = im.size
            pixels = np.asarray(im.convert("L"), dtype=np.float64)
        assert 250 <= width <= 4000 and 200 <= height <= 4000, (png, im.size)
        assert pixels.std() > 10, f"{png} looks blank"
        border = np.concatenate([pixels[:2].ravel(), pixels[-2:].ravel(),
                                 pixels[:, :2].ravel(), pixels[:, -2:].ravel()])
        assert border.min() == 255, f"{png}: something is cut off at the edge"
    with Image.open(out / report.CONFUSION_FILE) as im:  # scales with the number of classes
        assert min(im.size) >= 60 * min(len(names), 12)

    page = (out / report.HTML_FILE).read_text()
    for name in (*PNGS, report.METRICS_FILE):
        assert f'src="{name}"' in page or f'href="{name}"' in page, name
    assert f"{metrics['test_accuracy']:.2%}" in page
    assert "0.3125" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    for key, value in config.items():
        if key != "note":
            assert f"{key}: {value}" in page
    for name in names:
        assert name in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_worst_classes_are_highlighted():
    m = small_metrics(class_names=NAMES + ["fish"])
    assert report.worst_classes(m["per_class"]) == ["dog"]  # lowest F1 with test images
    page = report.render_html(m, {"model": "seed_cnn"})
    assert '<tr class="worst"><td>dog</td>' in page
    assert "No test images for: fish." in page


def test_misaligned_report_inputs_are_rejected(tmp_path: Path):
    images, y = _digits(5)
    m = small_metrics(class_names=[str(i) for i in range(10)], y_true=y, y_pred=y)
    with pytest.raises(ValueError, match="aligned"):
        write_report(tmp_path, metrics=m, images=images[:4], probs=_fake_probs(y, 10), y_true=y,
                     config={})
    with pytest.raises(ValueError, match="probs must be N x 10"):
        write_report(tmp_path, metrics=m, images=images, probs=_fake_probs(y, 9), y_true=y,
                     config={})


@pytest.mark.parametrize(
    "env, writable",
    [({"XDG_CONFIG_HOME": "{tmp}/cfg", "XDG_CACHE_HOME": "{tmp}/cache"}, True),
     ({"XDG_CONFIG_HOME": "{tmp}/a-file/cfg", "XDG_CACHE_HOME": "{tmp}/cache"}, False),
     ({"XDG_CONFIG_HOME": "{tmp}/cfg", "XDG_CACHE_HOME": "{tmp}/a-file/cache"}, False)],
    ids=["writable", "config-dir-unwritable", "cache-dir-unwritable"],
)
def test_matplotlib_dirs_probe(tmp_path: Path, monkeypatch, env, writable):
    (tmp_path / "a-file").write_text("not a directory")
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    assert plots._default_mpl_dirs_writable() is writable


def test_unwritable_home_gets_a_temporary_matplotlib_dir(tmp_path: Path):
    (tmp_path / "a-file").write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "a-file" / "cfg"), TMPDIR=str(tmp_path))
    code = ("import os, trainer.report.plots as r; r._matplotlib(); "
            "print(os.environ['MPLCONFIGDIR'])")
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2])
    assert Path(out.stdout.strip()).parent == tmp_path
    assert "Matplotlib created a temporary" not in out.stderr


def test_import_is_light():
    code = ("import sys, trainer.report; "
            "heavy = [m for m in ('tensorflow', 'matplotlib', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])
