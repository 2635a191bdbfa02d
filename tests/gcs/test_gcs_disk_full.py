"""A scratch volume that fills by blocks, not bytes, in the middle of a dataset download (#22):
many small images take a whole block each, so the free-bytes check before the download passes
and the disk is full half-way. One line, exit 2, the reason and what to change; nothing in the
output directory. A real tmpfs of 640 KiB is mounted as the scratch volume (root only)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from trainer.core.errors import EXIT_CONFIG

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def small_scratch(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "scratch"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_full_mid_download_is_one_line_and_exit_2(gcs_client, bucket, small_scratch, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    b = gcs_client.bucket(bucket)
    total = 0
    for c in range(4):
        for i in range(100):  # 400 images of ~200 bytes: ~80 KB of bytes, 400 blocks of 4 KiB
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), np.uint8)).save(buf, format="PNG")
            total += len(buf.getvalue())
            b.blob(f"ds/class{c}/{i:03d}.png").upload_from_string(buf.getvalue(), content_type="image/png")
    assert total < 640 * 1024 // 2  # by bytes the dataset fits the volume twice over
    out = tmp_path / "out"
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(small_scratch), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--data", f"gs://{bucket}/ds", "--output", str(out),
                           "--set", "model=seed_cnn", "--set", "image_size=16"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("configuration error: downloading gs://"), line
    assert "no space left on the local disk" in line and "scratch_size" in line, line
    assert not (out / "checkpoints").exists() and not (out / "report").exists()
