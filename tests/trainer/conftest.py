"""Shared fixtures for the trainer's tests: tiny real datasets and a subprocess runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# Small, fast settings for real TensorFlow training in tests.
FAST = ["--set", "image_size=16", "--set", "model=seed_cnn", "--set", "batch_size=32"]


def run_trainer(args: list[str], tmp_path: Path, timeout: float = 300, env: dict | None = None,
                **popen) -> subprocess.CompletedProcess:
    """``python -m trainer ARGS`` in a fresh process (fresh TensorFlow, real exit code)."""
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch"), "TF_CPP_MIN_LOG_LEVEL": "2",
           **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False, **popen,
    )


def preempt_trainer(args: list[str], tmp_path: Path, out: Path) -> str:
    """Start ``python -m trainer ARGS``, SIGTERM it once its first checkpoint is saved, and
    return its stderr after checking that it exited 143 (preempted). The run must save a
    checkpoint: pass ``steps_per_execution=1`` and enough epochs that it is still training."""
    from trainer.core.errors import EXIT_PREEMPTED

    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not marker.exists():
        proc.kill()
        _, stderr = proc.communicate(timeout=60)
        raise AssertionError(f"no checkpoint within the deadline (exit {proc.returncode}): {stderr[-3000:]}")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    return stderr


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """builtin:digits written as PNG files in class folders: a real class-folder dataset."""
    from trainer.data.builtin import export_builtin

    root = tmp_path_factory.mktemp("digits-folder")
    assert export_builtin("digits", root) == 1797
    return root


@pytest.fixture()
def tiny_folder(tmp_path) -> Path:
    """Three classes of 12 small RGB images each (solid colours plus noise)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        for i in range(12):
            img = np.clip(np.array(colour) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            write_png(root / f"class{c}" / f"{i}.png", img)
    return root
