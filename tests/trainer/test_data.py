"""Data discovery, splits, bad data, and the tf.data pipeline on tiny real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.core.errors import DataError
from trainer.data.dataset import (
    assign_splits,
    discover,
    load_builtin,
    load_dataset,
    split_files,
    split_position,
)

from .conftest import write_png


def cfg_for(root: Path, **kw):
    return load_config({"data": str(root), "output": "/tmp/unused", "image_size": 16, **kw})


def test_builtin_digits_split_is_deterministic_and_covers_every_class():
    cfg = load_config({"data": "builtin:digits", "output": "/tmp/o"})
    a, b = load_builtin("digits", cfg), load_builtin("digits", cfg)
    assert a.class_names == tuple(str(i) for i in range(10))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert np.array_equal(a.test.labels, b.test.labels)
    assert a.train.images.shape[1:] == (16, 16, 3) and a.train.images.dtype == np.uint8
    assert set(np.unique(a.test.labels)) == set(range(10))  # every class in every split
    # hash-based: the shares are the fractions in expectation (binomial), not exactly
    assert 0.08 < len(a.test) / 1797 < 0.12 and 0.08 < len(a.val) / 1797 < 0.12


def test_split_position_is_a_pure_uniform_hash():
    assert split_position("cat/1.jpg", 1) == split_position("cat/1.jpg", 1)
    assert split_position("cat/1.jpg", 1) != split_position("cat/1.jpg", 2)
    pos = np.array([split_position(f"c/{i}.jpg", 7) for i in range(20000)])
    assert ((pos >= 0) & (pos < 1)).all()
    assert np.histogram(pos, bins=10, range=(0, 1))[0].min() > 1800  # ~2000 per bin


def test_split_keeps_train_and_test_non_empty_per_class():
    cfg = load_config({"data": "/d", "output": "/o", "val_fraction": 0.3, "test_fraction": 0.3})
    # many tiny classes: some would hash entirely out of train, or have no test file
    keys = [f"class{c}/{i}.png" for c in range(200) for i in range(4)]
    labels = np.repeat(np.arange(200), 4)
    where = assign_splits(keys, labels, cfg, have_val=False, have_test=False)
    pos = np.array([split_position(k, cfg.seed) for k in keys]).reshape(200, 4)
    assert (pos.max(1) < 0.6).any() and ((pos.min(1) >= 0.3) & (pos.min(1) < 0.6)).any()  # both cases occur
    for c in range(200):
        got = set(where[labels == c])
        assert "train" in got, (c, got)
        assert "test" in got or got == {"train"}, (c, got)  # test is taken from val, never from train
    lone = assign_splits(["a/1.png", "b/1.png"], np.array([0, 1]), cfg, False, False)
    assert lone.tolist() == ["train", "train"]  # a class of one image trains


def test_split_folders_on_disk_take_nothing_from_train():
    cfg = load_config({"data": "/d", "output": "/o"})
    keys = [f"c{i % 3}/{i}.png" for i in range(3000)]
    labels = np.array([i % 3 for i in range(3000)])
    both = assign_splits(keys, labels, cfg, have_val=False, have_test=False)
    only_val = assign_splits(keys, labels, cfg, have_val=False, have_test=True)
    assert "test" not in set(only_val)
    # a file's val/train membership does not change when test/ comes from its own folder
    assert np.array_equal(only_val == "val", both == "val")


def test_adding_ten_percent_new_images_moves_no_existing_image(tmp_path):
    """The contract nightly promotion relies on: a growing dataset keeps every old file's split."""
    rng = np.random.default_rng(0)
    for c in range(3):
        for i in range(100):
            write_png(tmp_path / f"c{c}" / f"img{i:04d}.png", rng.integers(0, 255, (8, 8, 3), np.uint8))
    cfg = cfg_for(tmp_path)

    def split_of() -> dict[str, str]:
        _, found = split_files(tmp_path, cfg)
        return {p.relative_to(tmp_path).as_posix(): s for s, (files, _) in found.items() for p in files}

    before = split_of()
    for c in range(3):
        for i in range(100, 110):
            write_png(tmp_path / f"c{c}" / f"new{i:04d}.png", rng.integers(0, 255, (8, 8, 3), np.uint8))
    after = split_of()
    assert len(after) == 330 and set(before) < set(after)
    assert {k: after[k] for k in before} == before
    assert {"train", "val", "test"} == set(before.values())  # every split got old files


def test_folder_without_splits_is_carved(tiny_folder):
    ds = load_dataset(cfg_for(tiny_folder), tiny_folder)
    assert ds.class_names == ("class0", "class1", "class2")
    # hash-based split: 10%/10% in expectation; these 36 names and seed 1337 give 28/2/6
    assert (len(ds.train), len(ds.val), len(ds.test)) == (28, 2, 6)
    assert ds.train.images.shape == (28, 16, 16, 3)
    assert set(ds.train.labels.tolist()) == {0, 1, 2}


def test_folder_with_train_val_test_uses_them(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for cls in ("a", "b"):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", img + i)
    ds = load_dataset(cfg_for(tmp_path), tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 6)


def test_folder_with_train_only_carves_val_and_test(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            write_png(tmp_path / "train" / cls / f"{i}.png", np.full((8, 8, 3), i * 20, np.uint8))
    ds = load_dataset(cfg_for(tmp_path), tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)


@pytest.mark.parametrize(
    "layout, message",
    [
        pytest.param({"a/x.png": True, "b/readme.txt": False}, "class 'b' has no images", id="empty-class"),
        pytest.param({}, "no class subfolders", id="no-classes"),
        pytest.param({"a/x.png": True}, "only one class", id="one-class"),
        pytest.param({"val/a/x.png": True}, "no train/ folder", id="splits-without-train"),
        pytest.param({"train/a/1.png": True, "train/b/1.png": True, "test/c/1.png": True},
                     "classes ['c'] are not in the training split", id="unknown-class-in-test"),
    ],
)
def test_bad_layouts_are_data_errors(tmp_path, layout, message):
    tmp_path.joinpath("root").mkdir()
    for rel, is_image in layout.items():
        path = tmp_path / "root" / rel
        if is_image:
            write_png(path, np.zeros((8, 8, 3), np.uint8))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not an image")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        discover(tmp_path / "root")


def test_corrupt_images_are_skipped_and_counted(tiny_folder, caplog):
    (tiny_folder / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (tiny_folder / "class2" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 10)
    ds = load_dataset(cfg_for(tiny_folder, max_bad_image_fraction=0.1), tiny_folder)
    assert ds.skipped_images == 2
    assert len(ds.train) + len(ds.val) + len(ds.test) == 36
    assert "skipped 2 unreadable image(s) of 38" in caplog.text


def test_too_many_corrupt_images_fail(tiny_folder):
    for i in range(3):
        (tiny_folder / "class0" / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="3 of 39 images .* are unreadable"):
        load_dataset(cfg_for(tiny_folder, max_bad_image_fraction=0.01), tiny_folder)


def test_streaming_path_matches_in_memory_shapes(tiny_folder, tmp_path):
    (tiny_folder / "class1" / "broken.png").write_bytes(b"garbage")
    cfg = cfg_for(tiny_folder, cache="none", max_bad_image_fraction=0.1)
    ds = load_dataset(cfg, tiny_folder)
    assert ds.train.paths is not None and ds.train.images is None
    assert ds.skipped_images == 1

    from trainer.data.pipeline import make_batches, make_source

    batches = list(make_batches(make_source(ds.train, cfg), len(ds.train), cfg, 8, training=True))
    assert sum(int(b[0].shape[0]) for b in batches) == len(ds.train)
    assert batches[0][0].dtype.name == "uint8" and tuple(batches[0][0].shape[1:]) == (16, 16, 3)


def test_pipeline_is_seeded_per_epoch_and_skips_for_resume():
    from trainer.data.pipeline import make_batches, make_source

    cfg = load_config({"data": "builtin:digits", "output": "/tmp/o"})
    ds = load_builtin("digits", cfg)
    src = make_source(ds.train, cfg)

    def labels(epoch, skip=0):
        return np.concatenate([b[1].numpy() for b in make_batches(
            src, len(ds.train), cfg, 64, training=True, epoch=epoch, skip_examples=skip * 64)])

    e0 = labels(0)
    assert np.array_equal(e0, labels(0))  # same epoch, same order: a resumed epoch matches
    assert not np.array_equal(e0, labels(1))  # a new order every epoch
    assert np.array_equal(e0[3 * 64:], labels(0, skip=3))
    assert sorted(e0.tolist()) == sorted(ds.train.labels.tolist())


def test_augmentation_changes_training_images_only(tiny_folder):
    from trainer.data.pipeline import make_batches, make_source

    cfg = cfg_for(tiny_folder, augment={"rotation": 0.2, "shift": 0.2, "flip": "horizontal"})
    ds = load_dataset(cfg, tiny_folder)
    src = make_source(ds.train, cfg)
    plain = next(iter(make_batches(src, len(ds.train), cfg, 64, training=False)))[0].numpy()
    shuffled_aug = next(iter(make_batches(src, len(ds.train), cfg, 64, training=True)))
    assert shuffled_aug[0].dtype.name == "uint8"
    assert np.array_equal(plain, ds.train.images)  # evaluation sees the pixels as they are
    # the training batch is a permutation of the images, transformed: no image survives intact
    aug = shuffled_aug[0].numpy()
    intact = sum(any(np.array_equal(a, p) for p in plain) for a in aug)
    assert intact < len(aug) // 2
