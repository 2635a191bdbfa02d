"""A weights file of another backbone is refused in one line that keeps its reason, without
Keras' warning per layer on stderr (#22: ~300 lines of warnings, then a line cut before the
reason)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.mark.timeout(600)
def test_a_wrong_backbone_file_is_one_line_with_its_reason(tmp_path):
    from trainer.model.backbones import save_backbone_weights
    from trainer.model.build import build_model

    path = tmp_path / "mnv3.weights.h5"
    assert save_backbone_weights(build_model("mobilenetv3small", SIZE, 3), path)
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "s"), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--data", "builtin:digits", "--output",
                           str(tmp_path / "run"), "--epochs", "1", "--set", "model=efficientnetv2b0",
                           "--set", f"image_size={SIZE}", "--set", f"weights={path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=500, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) < 40, f"{len(lines)} lines:\n" + "\n".join(lines[:60])
    assert not any("UserWarning" in line or "Skipping" in line for line in lines), lines
    last = lines[-1]
    assert last.startswith("configuration error: weights file") and "does not fit backbone 'efficientnetv2b0'" in last
    assert "could not be loaded." in last and ("expected" in last or "shape" in last), last
    assert len(last) < 600
