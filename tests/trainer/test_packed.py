"""Packed datasets on local disk: the writer, the manifest, and the streamed tf.data pipeline
(order, resume, workers, the bounded shard window, damaged and half-written packs).
The same against the GCS emulator, end to end: tests/gcs/test_gcs_packed.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.core.errors import ConfigError, DataError
from trainer.data import packed
from trainer.data.dataset import open_dataset, split_files
from trainer.data.packer import PackOptions, pack
from trainer.data.pipeline import make_batches, make_source
from trainer.data.shard_window import file_sha256
from trainer.storage import Store

from .conftest import write_png

SMALL_SHARDS = PackOptions(shard_mb=0.004, workers=4)  # ~4 KB: a dozen shards of tiny PNGs


def cfg_for(data: Path, **kw):
    values = {"data": str(data), "output": "/tmp/unused", "image_size": 16,
              "augment": {"rotation": 0, "shift": 0, "zoom": 0, "flip": "none"}}
    return load_config({**values, **kw})


@pytest.fixture()
def folder(tmp_path) -> Path:
    """3 classes x 40 small RGB PNGs, each image's pixels encoding its class and index."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in range(3):
        for i in range(40):
            img = rng.integers(0, 255, (12, 12, 3), np.uint8)
            img[0, 0] = (c, i, 7)
            write_png(root / f"c{c}" / f"{i:03d}.png", img)
    return root


@pytest.fixture()
def packed_dir(folder, tmp_path) -> Path:
    dest = tmp_path / "packed"
    pack(str(folder), str(dest), SMALL_SHARDS, tmp_path / "scratch")
    return dest


def labels_of(ds) -> np.ndarray:
    return np.concatenate([b[1].numpy() for b in ds])


def test_manifest_records_splits_shards_and_checksums(folder, packed_dir):
    manifest = json.loads((packed_dir / "manifest.json").read_text())
    assert manifest["format"] == packed.FORMAT and manifest["version"] == packed.VERSION
    assert manifest["class_names"] == ["c0", "c1", "c2"]
    _, found = split_files(folder, cfg_for(folder))  # the splits training on the folder uses
    for split in ("train", "val", "test"):
        info = manifest["splits"][split]
        assert info["images"] == len(found[split][0]) == sum(info["per_class"].values())
        assert info["bytes"] == sum(s["bytes"] for s in info["shards"])
        for shard in info["shards"]:
            path = packed_dir / shard["name"]
            assert path.stat().st_size == shard["bytes"]
            assert file_sha256(path) == shard["sha256"]
    assert len(manifest["splits"]["train"]["shards"]) > 5
    assert not (packed_dir / ".pack").exists()
    parsed = packed.Manifest.from_json((packed_dir / "manifest.json").read_text(), "m")
    assert parsed.fingerprint == manifest["fingerprint"] == parsed.computed_fingerprint()


def test_records_keep_the_original_bytes(folder, packed_dir):
    import tensorflow as tf

    shard = min((packed_dir / "train").iterdir())
    for raw in tf.data.TFRecordDataset(str(shard)).take(3):
        ex = tf.train.Example.FromString(raw.numpy())
        feat = ex.features.feature
        key = feat["image/key"].bytes_list.value[0].decode()
        assert feat["image/encoded"].bytes_list.value[0] == (folder / key).read_bytes()
        assert feat["image/format"].bytes_list.value[0] == b"png"
        assert feat["image/class/label"].int64_list.value[0] == int(key[1])


def test_stream_covers_the_split_in_a_seeded_order_per_epoch(folder, packed_dir, tmp_path):
    cfg = cfg_for(packed_dir)
    ds = open_dataset(cfg, tmp_path / "scratch")
    assert ds.train.stream is not None and "packed" in ds.description
    src = make_source(ds.train, cfg)

    def epoch(e, skip=0, batch=8):
        return [b for b in make_batches(src, len(ds.train), cfg, batch, training=True, epoch=e,
                                        skip_examples=skip * batch)]

    e0 = epoch(0)
    images0 = np.concatenate([b[0].numpy() for b in e0])
    assert images0.shape == (len(ds.train), 16, 16, 3) and images0.dtype == np.uint8
    _, found = split_files(folder, cfg_for(folder))
    assert sorted(labels_of(e0).tolist()) == sorted(found["train"][1].tolist())
    assert np.array_equal(labels_of(e0), labels_of(epoch(0)))  # deterministic
    assert not np.array_equal(images0, np.concatenate([b[0].numpy() for b in epoch(1)]))
    # a resumed epoch continues on exactly the same batches
    resumed = epoch(0, skip=3)
    assert len(resumed) == len(e0) - 3
    for a, b in zip(e0[3:], resumed):
        assert np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(a[1].numpy(), b[1].numpy())
    # evaluation: every image once, not augmented, same order each time
    val = list(make_batches(make_source(ds.val, cfg), len(ds.val), cfg, 8, training=False))
    assert sum(len(b[1]) for b in val) == len(ds.val) == len(found["val"][0])


def test_shard_order_covers_the_split_and_changes_per_epoch(packed_dir, tmp_path):
    cfg = cfg_for(packed_dir)
    ds = open_dataset(cfg, tmp_path / "scratch")
    for e in (0, 1):
        assert sorted(ds.train.stream.shard_order(e, True)) == list(range(len(ds.train.stream.info.shards)))
    assert ds.train.stream.shard_order(0, True) != ds.train.stream.shard_order(1, True)
    assert ds.train.stream.shard_order(0, False) == list(range(len(ds.train.stream.info.shards)))


class BucketLike(Store):
    """A local store that must be copied in, like a bucket: exercises the download window."""

    def local_path(self, rel):
        return None


def test_shard_window_stays_bounded_and_cleans_up(packed_dir, tmp_path):
    cfg = cfg_for(packed_dir, stream_window=2)
    store = BucketLike(str(packed_dir))
    manifest = packed.read_manifest(store)
    src = packed.PackedSource(store, manifest, "train", tmp_path / "scratch", window=2)
    n = sum(len(b[1]) for b in make_batches(src, len(src), cfg, 8, training=True))
    window = src.last_window
    largest = max(s.bytes for s in manifest.splits["train"].shards)
    assert n == len(src) and len(manifest.splits["train"].shards) > 6
    assert 0 < window.peak_bytes_on_disk <= (2 + packed.CYCLE_LENGTH) * largest  # window + open shards
    assert window.bytes_on_disk == 0 and not list(window.dir.glob("*.tfrecord"))


@pytest.mark.parametrize("damage, message", [
    pytest.param(lambda b: b[:-10], "is truncated", id="truncated"),
    pytest.param(lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "fails its checksum", id="bit-flip"),
])
def test_damaged_shard_is_a_data_error_naming_it(packed_dir, tmp_path, damage, message):
    shard = sorted((packed_dir / "train").iterdir())[2]
    shard.write_bytes(damage(shard.read_bytes()))
    cfg = cfg_for(packed_dir)
    ds = open_dataset(cfg, tmp_path / "scratch")
    with pytest.raises(DataError, match=f"shard .*{shard.name} {message}"), packed.stream_errors(ds.uri):
        for _ in make_batches(make_source(ds.train, cfg), len(ds.train), cfg, 8, training=True):
            pass


def test_half_written_pack_is_refused_then_resumed(folder, tmp_path, monkeypatch):
    dest = tmp_path / "packed"
    real_put = Store.put_file
    calls = {"n": 0}

    def flaky_put(self, src, rel):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed mid-pack
        real_put(self, src, rel)

    monkeypatch.setattr(Store, "put_file", flaky_put)
    with pytest.raises(KeyboardInterrupt):
        pack(str(folder), str(dest), SMALL_SHARDS, tmp_path / "scratch")
    assert not (dest / "manifest.json").exists() and (dest / ".pack").is_dir()
    with pytest.raises(DataError, match="still being written .* run `python -m trainer data pack"):
        open_dataset(cfg_for(dest), tmp_path / "scratch")

    monkeypatch.setattr(Store, "put_file", real_put)
    resumed = pack(str(folder), str(dest), SMALL_SHARDS, tmp_path / "scratch")
    clean = pack(str(folder), str(tmp_path / "clean"), SMALL_SHARDS, tmp_path / "scratch")
    assert resumed.fingerprint == clean.fingerprint  # same shards, byte for byte
    with pytest.raises(ConfigError, match="already holds a packed dataset"):
        pack(str(folder), str(dest), SMALL_SHARDS, tmp_path / "scratch")


def test_corrupt_images_are_skipped_and_counted(folder, tmp_path):
    (folder / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    good = (folder / "c2" / "000.png").read_bytes()
    (folder / "c2" / "truncated.png").write_bytes(good[: len(good) // 2])
    manifest = pack(str(folder), str(tmp_path / "p"), PackOptions(max_bad_image_fraction=0.05),
                    tmp_path / "scratch")
    assert manifest.skipped_images == 2
    assert sum(manifest.splits[s].images for s in ("train", "val", "test")) == 120
    with pytest.raises(DataError, match="2 of 122 images .* unreadable"):
        pack(str(folder), str(tmp_path / "q"), PackOptions(max_bad_image_fraction=0.01), tmp_path / "scratch")


def test_training_stopped_mid_epoch_resumes_on_the_same_streamed_batches(packed_dir, tmp_path):
    """The training loop on a packed stream: a preempted epoch resumed from its checkpoint
    trains on exactly the batches of an uninterrupted run (same loss, same weights)."""
    from trainer.core.errors import Preempted
    from trainer.core.preemption import StopRequest
    from trainer.runtime.devices import make_runtime
    from trainer.storage import LocalRunDir
    from trainer.training.checkpoint import Checkpointer
    from trainer.training.loop import Trainer

    def trainer_for(out: Path):
        cfg = cfg_for(packed_dir, output=str(out), model="seed_cnn", epochs=1, batch_size=16,
                      steps_per_execution=2)
        t = Trainer(cfg, make_runtime(cfg), open_dataset(cfg, tmp_path / "scratch"))
        return t, Checkpointer(LocalRunDir(str(out)), t.model, t.optimizer, keep=2)

    clean, clean_ckpt = trainer_for(tmp_path / "clean")
    clean_result = clean.fit(clean_ckpt, StopRequest())
    first, first_ckpt = trainer_for(tmp_path / "cut")
    stop = StopRequest()
    stop.set("test stop")
    with pytest.raises(Preempted, match=f"step 2/{clean.steps_per_epoch}"):
        first.fit(first_ckpt, stop)
    second, second_ckpt = trainer_for(tmp_path / "cut")
    resumed = second.fit(second_ckpt, StopRequest())
    assert resumed.resumed_from == (0, 2)
    # Same batches, same order; the epoch's mean loss is summed in two processes, and in the
    # machine's precision (bf16 on CPUs with bf16 units) that moves its 4th digit.
    np.testing.assert_allclose(resumed.history["loss"], clean_result.history["loss"], rtol=2e-3)
    for a, b in zip(second.model.get_weights(), clean.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_shard_windows_of_killed_processes_are_removed(tmp_path, monkeypatch):
    import os
    import subprocess

    proc = subprocess.Popen(["true"])  # a pid that has exited
    proc.wait()
    stream = tmp_path / "scratch" / "stream"
    orphan = stream / f"{proc.pid}-abc123"
    orphan.mkdir(parents=True)
    (orphan / "train__train-00000.tfrecord").write_bytes(b"x")
    mine = stream / "notapid"
    mine.mkdir()
    monkeypatch.setattr(packed, "_scratch_root", None)
    root = packed._stream_scratch(tmp_path / "scratch")
    assert not orphan.exists() and mine.exists()
    assert root.parent == stream and root.name.startswith(f"{os.getpid()}-")


def test_manifest_records_native_size_for_auto_image_size(folder, packed_dir, tmp_path):
    from trainer.config.auto import size_range
    from trainer.data.scan import fit_to_source

    manifest = packed.read_manifest(Store(str(packed_dir)))
    assert manifest.native_size == {"median_shorter_side": 12, "smallest": 12, "largest": 12, "images": 120}
    cfg = load_config({"data": str(packed_dir), "output": str(tmp_path / "o"), "model": "seed_cnn"})
    lo, hi = size_range("seed_cnn")
    resolved = fit_to_source(cfg, tmp_path / "scratch").config
    assert resolved.image_size == min(hi, max(lo, 12))
    folder_cfg = load_config({"data": str(folder), "output": str(tmp_path / "o"), "model": "seed_cnn"})
    assert fit_to_source(folder_cfg, tmp_path / "scratch").config.image_size == resolved.image_size
