"""Packed datasets in a bucket (the GCS emulator), end to end through the CLI: pack a generated
class-folder dataset to gs://, train from it (streamed), and get the same report as training on
the class folders; damaged shards and half-written packs are exit 3 with one clear line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.core.errors import EXIT_DATA

pytestmark = [pytest.mark.gcs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "1", "--set", "model=seed_cnn", "--set", "image_size=16", "--set", "batch_size=32"]


def run(args: list[str], scratch: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """4 classes x 40 JPEGs (colour-coded noise, so a CNN learns something in one epoch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("jpegs")
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    for c, colour in enumerate(colours):
        (root / f"class{c}").mkdir()
        for i in range(40):
            img = np.clip(np.array(colour) + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture()
def packed_uri(jpeg_folder, bucket, tmp_path) -> str:
    uri = f"gs://{bucket}/packed/shapes"
    proc = run(["data", "pack", str(jpeg_folder), uri, "--shard-size-mb", "0.01"], tmp_path / "pack")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "packed gs://" in proc.stderr
    return uri


@pytest.mark.timeout(900)
def test_pack_to_bucket_then_train_streamed_like_class_folders(jpeg_folder, packed_uri, bucket, gcs_client,
                                                              tmp_path):
    blobs = {b.name for b in gcs_client.list_blobs(bucket, prefix="packed/shapes/")}
    assert "packed/shapes/manifest.json" in blobs and not any("/.pack/" in b for b in blobs)
    manifest = json.loads(gcs_client.bucket(bucket).blob("packed/shapes/manifest.json").download_as_bytes())
    assert len(manifest["splits"]["train"]["shards"]) >= 4

    streamed = run(["--data", packed_uri, "--output", f"gs://{bucket}/runs/packed", *FAST], tmp_path / "pod1")
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    assert "packed, 4 classes" in streamed.stderr and "streamed" in streamed.stderr
    folders = run(["--data", str(jpeg_folder), "--output", str(tmp_path / "folders"), *FAST], tmp_path / "pod2")
    assert folders.returncode == 0, folders.stderr[-3000:]

    m_stream = json.loads(gcs_client.bucket(bucket).blob("runs/packed/report/metrics.json").download_as_bytes())
    m_folder = json.loads((tmp_path / "folders" / "report" / "metrics.json").read_text())
    assert set(m_stream) == set(m_folder)
    assert set(m_stream["history"]) == set(m_folder["history"])
    assert m_stream["class_names"] == m_folder["class_names"] == manifest["class_names"]
    # same split rule at pack time and at train time: the same images in test
    assert m_stream["num_test_images"] == m_folder["num_test_images"] == manifest["splits"]["test"]["images"]
    assert m_stream["num_train_images"] == m_folder["num_train_images"]
    assert np.array(m_stream["confusion_matrix"]).shape == np.array(m_folder["confusion_matrix"]).shape == (4, 4)
    assert m_stream["test_accuracy"] > 0.5  # colour-coded classes: far above chance (0.25)
    # the shard window left nothing behind on the pod's scratch
    assert not list((tmp_path / "pod1").rglob("*.tfrecord"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("damage, message", [
    pytest.param(lambda b: b[: len(b) // 2], "is truncated", id="truncated"),
    pytest.param(lambda b: b[:50] + bytes([b[50] ^ 0xFF]) + b[51:], "fails its checksum", id="checksum"),
])
def test_damaged_shard_in_bucket_is_exit_3_naming_it(packed_uri, bucket, gcs_client, tmp_path, damage, message):
    name = "packed/shapes/train/train-00001.tfrecord"
    blob = gcs_client.bucket(bucket).blob(name)
    blob.upload_from_string(damage(blob.download_as_bytes()))
    proc = run(["--data", packed_uri, "--output", str(tmp_path / "out"), *FAST], tmp_path / "pod")
    assert proc.returncode == EXIT_DATA, proc.stderr[-3000:]
    line = last_line(proc)
    assert line.startswith("data error: shard gs://") and f"train/train-00001.tfrecord {message}" in line, line
    assert not (tmp_path / "out" / "report").exists()


@pytest.mark.timeout(300)
def test_half_written_pack_is_refused_with_a_clear_line(packed_uri, bucket, gcs_client, tmp_path):
    b = gcs_client.bucket(bucket)
    b.blob("packed/shapes/.pack/plan.json").upload_from_string(b'{"plan": "x"}')  # as a killed pack leaves it
    b.blob("packed/shapes/manifest.json").delete()
    proc = run(["--data", packed_uri, "--output", str(tmp_path / "out"), *FAST], tmp_path / "pod")
    assert proc.returncode == EXIT_DATA, proc.stderr[-3000:]
    assert last_line(proc) == (
        f"data error: {packed_uri} is a packed dataset still being written (no manifest.json yet): "
        f"run `python -m trainer data pack SRC {packed_uri}` again to finish it")
