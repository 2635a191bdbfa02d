"""Destinations and arguments checked before any work (#22): `promote_to` that cannot be
written (or lies inside the dataset) fails before training and says promote_to; `data pack`
into a directory that holds a class-folder dataset is refused and writes nothing; a NaN,
infinite or negative number to `data pack` is one line, exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "1", "--set", "model=seed_cnn", "--set", "image_size=16"]


def trainer(*args: str, scratch: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def last_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def test_an_unwritable_promote_to_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a file where a directory must go: not writable, even as root
    proc = trainer("--data", "builtin:digits", "--output", str(tmp_path / "run"),
                   "--set", f"promote_to={blocker}/serving", *FAST, scratch=tmp_path / "s")
    line = last_line(proc, 2)
    assert line.startswith("configuration error: promote_to directory") and "not writable" in line
    assert "epoch 1/1" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_promote_to_inside_the_dataset_is_refused(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
    proc = trainer("--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                   "--set", f"promote_to={tmp_path / 'data' / 'serving'}", *FAST, scratch=tmp_path / "s")
    assert "config key 'promote_to'" in last_line(proc, 2) and "inside it" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a", "b"]


@pytest.mark.parametrize("flag, value, expected", [
    ("--shard-size-mb", "nan", "must be in (0, 65536]"),
    ("--shard-size-mb", "inf", "must be in (0, 65536]"),
    ("--shard-size-mb", "0", "must be in (0, 65536]"),
    ("--seed", "-1", "must be in [0, 4294967295]"),
    ("--seed", "1.5", "is not a whole number"),
    ("--val-fraction", "0.5", "must be in [0, 0.5)"),
    ("--test-fraction", "nan", "must be in (0, 0.5)"),
    ("--max-bad-image-fraction", "-0.1", "must be in [0, 1]"),
    ("--workers", "0", "must be in [1, 256]"),
])
def test_bad_numbers_to_data_pack_are_one_line(tmp_path, flag, value, expected):
    proc = trainer("data", "pack", "builtin:digits", str(tmp_path / "packed"), flag, value,
                   scratch=tmp_path / "s")
    line = last_line(proc, 2)
    assert line.startswith(f"error: argument {flag}:") and expected in line, line
    assert not (tmp_path / "packed").exists()


def test_data_pack_into_a_class_folder_dataset_is_refused(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        (tmp_path / "data" / c / "1.png").write_bytes(b"\x89PNG not really")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    proc = trainer("data", "pack", "builtin:digits", str(tmp_path / "data"), scratch=tmp_path / "s")
    line = last_line(proc, 2)
    assert "already holds files that are not a pack" in line and "cat/1.png" in line
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before
