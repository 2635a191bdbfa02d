"""Bucket contents a retry cannot fix exit 3 in one line naming the object (GCS emulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.core.errors import EXIT_DATA

pytestmark = [pytest.mark.gcs]

REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "1", "--set", "model=seed_cnn", "--set", "image_size=16"]


def trainer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("data error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_object_name_too_long_for_the_filesystem_exits_3(gcs_client, bucket, tmp_path):
    b = gcs_client.bucket(bucket)
    for cls in ("a", "b"):
        b.blob(f"data/{cls}/1.png").upload_from_string(b"x")
    b.blob(f"data/a/{'n' * 300}.png").upload_from_string(b"x")
    proc = trainer(tmp_path, "--data", f"gs://{bucket}/data", "--output", str(tmp_path / "out"), *FAST)
    assert proc.returncode == EXIT_DATA
    line = one_error_line(proc)
    assert "longer than 255 bytes" in line and "rename it" in line and len(line) < 400


def test_corrupt_staging_manifest_in_the_output_bucket_exits_3(gcs_client, bucket, tmp_path):
    b = gcs_client.bucket(bucket)
    b.blob("runs/r1/.staging/20260101T000000-abcd1234/manifest.json").upload_from_string(b"{not json")
    proc = trainer(tmp_path, "--data", "builtin:digits", "--output", f"gs://{bucket}/runs/r1", *FAST)
    assert proc.returncode == EXIT_DATA
    line = one_error_line(proc)
    assert f"gs://{bucket}/runs/r1/.staging/20260101T000000-abcd1234/" in line
    assert "delete" in line
