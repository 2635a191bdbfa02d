"""Failures a retry cannot fix: through the real CLI, each exits 2 or 3 with one clear line,
loses nothing, and leaves the previous good run directory (model/, report/, config.yaml) as it was.

One finished run (digits, 1 epoch, 16x16) is trained once per module and copied for each case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.core.errors import EXIT_CONFIG, EXIT_DATA

from .conftest import FAST, run_trainer, write_png

DIGITS = ["--data", "builtin:digits", "--epochs", "1", *FAST]


def error_line(proc, kind: str) -> str:
    """The one error line on stderr (there must be exactly one, and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(kind + ":")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert len(lines[0]) < 600, lines[0][:700]
    return lines[0]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run's results that a failed run must not change."""
    files = [out / "config.yaml", *sorted((out / "model").rglob("*")), *sorted((out / "report").rglob("*"))]
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("good")
    out = tmp / "out"
    proc = run_trainer([*DIGITS, "--output", str(out)], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture()
def run_copy(good_run, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good_run, out)
    return out


# -- the config file --------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    pytest.param(b"epochs: 2\nmodel: \xff\xfe\n", "is not UTF-8 text", id="not-utf8"),
    pytest.param(None, "is not a regular file", id="a-directory"),
    pytest.param(b"optimizer:\n  - &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(
        b"  - &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % (n, p, p, p, p, p, p, p, p, p)
        for p, n in zip(b"abcdef", b"bcdefg")), "'optimizer': expected str, got [[", id="alias-bomb"),
])
def test_unreadable_config_file_exits_2_in_one_short_line(tmp_path, content, message):
    path = tmp_path / "train.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    proc = run_trainer([*DIGITS, "--output", str(tmp_path / "out"), "--config", str(path)], tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert message in error_line(proc, "configuration error")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, message", [
    pytest.param("output", "gs://Bad_Bucket!/runs", "is not a valid bucket name", id="bad-bucket"),
    pytest.param("data", "gs://ok-bucket\n/x", "control character", id="newline-in-uri"),
])
def test_malformed_bucket_exits_2(tmp_path, key, value, message):
    args = {"data": "builtin:digits", "output": str(tmp_path / "out"), key: value}
    proc = run_trainer(["--data", args["data"], "--output", args["output"], *FAST], tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert message in error_line(proc, "configuration error")


# -- run-directory consistency ----------------------------------------------------------------


def test_output_inside_data_is_refused(tiny_folder, tmp_path):
    before = sorted(p.name for p in tiny_folder.rglob("*"))
    for out in (tiny_folder, tiny_folder / "runs" / "r1"):
        proc = run_trainer(["--data", str(tiny_folder), "--output", str(out), *FAST], tmp_path)
        assert proc.returncode == EXIT_CONFIG
        assert "inside it" in error_line(proc, "configuration error")
    assert sorted(p.name for p in tiny_folder.rglob("*")) == before


def test_unwritable_scratch_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_trainer([*DIGITS, "--output", str(tmp_path / "o")], tmp_path,
                       env={"KUBETRAIN_SCRATCH": str(blocker / "scratch")})
    assert proc.returncode == EXIT_CONFIG
    assert "set KUBETRAIN_SCRATCH" in error_line(proc, "configuration error")


@pytest.mark.parametrize("change", [
    pytest.param(["--set", "learning_rate=0.01"], id="learning-rate"),
    pytest.param(["--set", "test_fraction=0.2"], id="test-fraction"),
    pytest.param(["--set", "val_fraction=0.2"], id="val-fraction"),
])
def test_rerun_with_another_config_is_refused_and_changes_nothing(run_copy, tmp_path, change):
    before = snapshot(run_copy)
    proc = run_trainer([*DIGITS, "--output", str(run_copy), *change], tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert "holds a run with a different config" in error_line(proc, "configuration error")
    assert snapshot(run_copy) == before


# -- checkpoints ------------------------------------------------------------------------------


def _checkpoint_files(out: Path) -> tuple[dict, list[Path]]:
    marker = json.loads((out / "checkpoints" / "latest.json").read_text())
    return marker, [out / "checkpoints" / f for f in marker["files"]]


@pytest.mark.parametrize("damage", ["truncated", "missing", "marker"])
def test_damaged_checkpoint_exits_3_and_says_what_to_do(run_copy, tmp_path, damage):
    _, files = _checkpoint_files(run_copy)
    data_file = next(f for f in files if ".data-" in f.name)
    if damage == "truncated":
        data_file.write_bytes(data_file.read_bytes()[:100])
    elif damage == "missing":
        data_file.unlink()
    else:
        (run_copy / "checkpoints" / "latest.json").write_text('{"checkpoint": "ckpt-0001-0000')
    before = snapshot(run_copy)
    proc = run_trainer([*DIGITS, "--output", str(run_copy)], tmp_path)
    assert proc.returncode == EXIT_DATA
    line = error_line(proc, "data error")
    assert "checkpoints/" in line and "to start the run over" in line
    assert snapshot(run_copy) == before


def test_checkpoint_of_another_class_list_exits_2(tmp_path, tiny_folder):
    out = tmp_path / "out"
    args = ["--data", str(tiny_folder), "--output", str(out), "--epochs", "1", *FAST]
    assert run_trainer(args, tmp_path).returncode == 0
    before = snapshot(out)
    rng = np.random.default_rng(1)
    for i in range(12):  # a fourth class appears
        write_png(tiny_folder / "class3" / f"{i}.png", rng.integers(0, 255, (20, 20, 3), np.uint8))
    proc = run_trainer(args, tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert "was trained with class_names" in error_line(proc, "configuration error")
    assert snapshot(out) == before

    # A marker without the class list (an older run): the shapes themselves are checked.
    marker_path = out / "checkpoints" / "latest.json"
    marker = json.loads(marker_path.read_text())
    del marker["class_names"]
    marker_path.write_text(json.dumps(marker))
    proc = run_trainer(args, tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert "does not fit this model" in error_line(proc, "configuration error")
    assert snapshot(out) == before


# -- bounded bad input ------------------------------------------------------------------------


def test_huge_and_unlisted_format_images_are_skipped_from_the_header(tiny_folder, tmp_path):
    from PIL import Image

    Image.new("1", (9000, 9000)).save(tiny_folder / "class0" / "huge.png")  # 81 MP, ~10 KB on disk
    Image.new("RGB", (20, 20)).save(tiny_folder / "class1" / "really-a-tiff.png", format="TIFF")
    out = tmp_path / "out"
    proc = run_trainer(["--data", str(tiny_folder), "--output", str(out), "--epochs", "1", *FAST,
                        "--set", "max_bad_image_fraction=0.1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "9000x9000 pixels exceeds max_image_pixels=40000000" in proc.stderr
    assert "skipped 2 unreadable image(s) of 38" in proc.stderr
    assert json.loads((out / "report" / "metrics.json").read_text())["skipped_images"] == 2


# -- divergence -------------------------------------------------------------------------------


def test_nan_loss_exits_with_the_diverged_code_and_keeps_the_last_model(run_copy, tmp_path):
    from trainer.core.errors import EXIT_DIVERGED

    before = snapshot(run_copy)
    out = tmp_path / "fresh"
    proc = run_trainer([*DIGITS, "--output", str(out), "--set", "learning_rate=1e38"], tmp_path)
    assert proc.returncode == EXIT_DIVERGED
    assert "lower the learning rate" in error_line(proc, "training diverged")
    assert not (out / "model").exists() and not (out / "report").exists()
    assert snapshot(run_copy) == before
