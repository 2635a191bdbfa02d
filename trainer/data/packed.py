"""The packed dataset format, and streaming it into ``tf.data``.

A class-folder dataset of many small files is slow to list and fetch from a bucket and, once
downloaded whole, needs a disk as large as the dataset. ``python -m trainer data pack``
(``trainer/data/packer.py``) turns it into a few large shards that are streamed instead::

    DEST/manifest.json                       written last: without it the pack is incomplete
    DEST/train/train-00000.tfrecord ...      TFRecord files of tf.train.Example records
    DEST/val/val-00000.tfrecord
    DEST/test/test-00000.tfrecord

Each record holds one image exactly as it came (``image/encoded``: the original JPEG/PNG/...
bytes, never re-encoded), ``image/format`` (the file's extension), ``image/class/label`` (int64,
an index into the manifest's ``class_names``) and ``image/key`` (the file's path relative to
the class folders, which also fixed its split). Records in a shard are in a seeded random
order, so every shard mixes the classes. The manifest (``Manifest``) records the format and its
version, the class names, per split the image count, the count per class and every shard's
name, byte size, SHA-256 and image count, the split parameters, the skipped (unreadable)
images, and a fingerprint of all of it.

Streaming (``PackedSource.batches``), per epoch:
shard order (a seeded permutation per epoch when training) -> a bounded window of shards
fetched ahead onto local scratch (``trainer/data/shard_window.py``, parallel downloads) -> interleave of ``CYCLE_LENGTH`` shards
(record by record) -> shuffle buffer (seeded per epoch) -> skip what a resumed epoch already trained on
(serialized records, nothing decoded) -> decode + resize (parallel) -> batch -> augment ->
prefetch. The same (seed, epoch) gives the same batches, so a resume lands on the same
position. A damaged shard (wrong size or checksum) or an image ``tf.data`` cannot decode is a
data error naming the shard (exit 3), never a silently short epoch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.core.errors import DataError
from trainer.core.quoting import brief
from trainer.data.shard_window import FAILURES, ShardRef, ShardWindow, clear_scratch

log = logging.getLogger(__name__)

FORMAT = "kubetrain.packed-images"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS_DIR = ".pack"  # exists while a pack is being written (see trainer/data/packer.py)
SPLITS = ("train", "val", "test")
SHARD_SUFFIX = ".tfrecord"

CYCLE_LENGTH = 4  # shards read at once (interleave): mixes shards, overlaps their reads
SHUFFLE_BUFFER_BYTES = 256 << 20  # the shuffle buffer holds encoded records: bound its memory
SHUFFLE_BUFFER_MAX = 10_000
FETCH_THREADS = 4


def shard_name(split: str, index: int) -> str:
    return f"{split}/{split}-{index:05d}{SHARD_SUFFIX}"


# ---------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class SplitInfo:
    images: int
    per_class: dict[str, int]
    shards: tuple[ShardRef, ...]

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


@dataclass(frozen=True)
class Manifest:
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    seed: int
    val_fraction: float
    test_fraction: float
    skipped_images: int = 0
    source: str = ""
    created: str = ""
    fingerprint: str = field(default="")
    native_size: dict | None = None  # median/smallest/largest shorter side in pixels, images

    def computed_fingerprint(self) -> str:
        """SHA-256 of the class names and every shard's name, size, checksum and count."""
        body = {"format": FORMAT, "version": VERSION, "class_names": list(self.class_names),
                "splits": {name: [[s.name, s.bytes, s.sha256, s.images] for s in info.shards]
                           for name, info in sorted(self.splits.items())}}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint or self.computed_fingerprint(),
            "created": self.created,
            "source": self.source,
            "class_names": list(self.class_names),
            "split_rule": {"seed": self.seed, "val_fraction": self.val_fraction,
                           "test_fraction": self.test_fraction},
            "skipped_images": self.skipped_images,
            "native_size": self.native_size,
            "splits": {
                name: {"images": info.images, "bytes": info.bytes, "per_class": info.per_class,
                       "shards": [{"name": s.name, "bytes": s.bytes, "sha256": s.sha256,
                                   "images": s.images} for s in info.shards]}
                for name, info in self.splits.items()
            },
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str, where: str) -> Manifest:
        """Parse and check a manifest; DataError saying what is wrong."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise DataError(f"{where} is not a packed-dataset manifest (format {raw.get('format')!r})")
            if raw.get("version") != VERSION:
                raise DataError(f"{where}: format version {raw.get('version')!r} is not supported "
                                f"(this trainer reads version {VERSION}); pack the dataset again")
            splits = {}
            for name, info in raw["splits"].items():
                shards = tuple(ShardRef(s["name"], int(s["bytes"]), str(s["sha256"]), int(s["images"]))
                               for s in info["shards"])
                splits[name] = SplitInfo(int(info["images"]), dict(info["per_class"]), shards)
            rule = raw["split_rule"]
            manifest = cls(tuple(raw["class_names"]), splits, int(rule["seed"]),
                           float(rule["val_fraction"]), float(rule["test_fraction"]),
                           int(raw.get("skipped_images", 0)), raw.get("source", ""),
                           raw.get("created", ""), raw["fingerprint"], raw.get("native_size"))
        except DataError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where} is malformed ({type(exc).__name__}: {brief(str(exc), 120)}); "
                            "pack the dataset again") from None
        except RecursionError:
            raise DataError(f"{where} is nested too deeply to be a manifest; pack the dataset again") from None
        _check_counts(manifest, where)
        if manifest.fingerprint != manifest.computed_fingerprint():
            raise DataError(f"{where}: the fingerprint does not match the shards listed; "
                            "the manifest was edited or damaged: pack the dataset again")
        missing = [s for s in SPLITS if s not in manifest.splits or not manifest.splits[s].images]
        if missing:
            raise DataError(f"{where}: the {missing[0]} split has no images")
        for info in manifest.splits.values():
            for shard in info.shards:
                _check_shard_name(shard.name, where)
        return manifest


def _check_counts(manifest: Manifest, where: str) -> None:
    """The counts a manifest states agree with each other and with its class list (the
    fingerprint covers the shards, not these): an edited count or class list is refused here,
    not found out by TensorFlow mid-training."""
    names = manifest.class_names
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"{where}: 'class_names' must be distinct non-empty names; pack the dataset again")
    for split, info in manifest.splits.items():
        in_shards = sum(s.images for s in info.shards)
        per_class = info.per_class
        unknown = sorted(set(per_class) - set(names), key=str)
        if unknown:
            raise DataError(f"{where}: key 'splits.{split}.per_class' names {brief(unknown[0])}, which is "
                            "not in 'class_names'; the manifest was edited: pack the dataset again")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in per_class.values()):
            raise DataError(f"{where}: key 'splits.{split}.per_class' holds a value that is not a count")
        if not info.images == in_shards == sum(per_class.values()):
            raise DataError(f"{where}: key 'splits.{split}.images': the counts disagree (images "
                            f"{info.images}, in its shards {in_shards}, per class {sum(per_class.values())}); "
                            "the manifest was edited: pack the dataset again")


def _check_shard_name(name: str, where: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"{where}: shard name {name!r} is not a safe relative path")


def read_manifest(store) -> Manifest | None:
    """The manifest of the packed dataset at ``store``; None if it is not a packed dataset.

    A destination that a pack was still writing (its progress folder, no manifest yet) is a
    DataError: it is not a dataset yet, and guessing would train on part of it.
    """
    raw = store.read_bytes(MANIFEST)
    if raw is None:
        if store.list(PROGRESS_DIR):
            raise DataError(
                f"{store.uri} is a packed dataset still being written (no {MANIFEST} yet): run "
                f"`python -m trainer data pack SRC {store.uri}` again to finish it"
            )
        return None
    return Manifest.from_json(raw, store.uri_of(MANIFEST))


# ---------------------------------------------------------------------------------------------
# Records


FEATURE_IMAGE = "image/encoded"
FEATURE_FORMAT = "image/format"
FEATURE_LABEL = "image/class/label"
FEATURE_KEY = "image/key"


def example_bytes(encoded: bytes, fmt: str, label: int, key: str) -> bytes:
    """One image as a serialized ``tf.train.Example``."""
    import tensorflow as tf

    feature = {
        FEATURE_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        FEATURE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[fmt.encode()])),
        FEATURE_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        FEATURE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def decode_record(size: int):
    """serialized Example -> (uint8 image [size, size, 3], int32 label), as ``tf.data`` ops."""
    import tensorflow as tf

    spec = {FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
            FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64)}

    def decode(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        img = tf.io.decode_image(ex[FEATURE_IMAGE], channels=3, expand_animations=False)
        img = tf.image.resize(img, (size, size), antialias=True)
        img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
        return tf.ensure_shape(img, (size, size, 3)), tf.cast(ex[FEATURE_LABEL], tf.int32)

    return decode


# ---------------------------------------------------------------------------------------------
# Streaming

_scratch_root: Path | None = None


def _stream_scratch(scratch: Path) -> Path:
    """This process's directory for shard windows, removed at exit."""
    global _scratch_root
    if _scratch_root is None:
        _remove_orphans(scratch / "stream")
        _scratch_root = scratch / "stream" / f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        atexit.register(clear_scratch, _scratch_root)
    return _scratch_root


def clear_stream_scratch() -> None:
    """Remove this process's shard windows now (for exits that skip ``atexit``: ``os._exit``)."""
    if _scratch_root is not None:
        clear_scratch(_scratch_root)


def _remove_orphans(root: Path) -> None:
    """Shard windows left by processes that were killed (SIGKILL skips atexit)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a process that is gone", entry)
            clear_scratch(entry)
        except PermissionError:
            pass  # alive, someone else's


class PackedSource:
    """One split of a packed dataset, streamed (what ``pipeline.make_source`` returns for it).
    Every worker of a multi-worker run reads all of it (``multiworker.shard_by_data``)."""

    def __init__(self, store, manifest: Manifest, split: str, scratch: Path, *, window: int):
        self.store = store
        self.manifest = manifest
        self.split = split
        self.info = manifest.splits[split]
        self.scratch = scratch
        self.window = window
        largest = max(s.bytes for s in self.info.shards)
        # Small splits (val, test: read every epoch) stay on scratch after their first pass.
        self.keep = self.info.bytes <= window * largest and split != "train"
        self.last_window: ShardWindow | None = None

    def __len__(self) -> int:
        return self.info.images

    def shard_order(self, epoch: int, training: bool) -> list[int]:
        """The shards of ``epoch`` in reading order: permuted per epoch from the seed when training."""
        n = len(self.info.shards)
        order = (np.random.default_rng([self.manifest.seed, epoch]).permutation(n) if training
                 else np.arange(n))
        return [int(i) for i in order]

    def _shuffle_buffer(self) -> int:
        mean = max(1, self.info.bytes // max(1, self.info.images))
        return int(min(SHUFFLE_BUFFER_MAX, max(256, SHUFFLE_BUFFER_BYTES // mean)))

    def records(self, epoch: int, training: bool):
        """Serialized examples of the shards of ``epoch``, in a deterministic order."""
        import tensorflow as tf

        shards = [self.info.shards[i] for i in self.shard_order(epoch, training)]
        directory = _stream_scratch(self.scratch) / (self.split if self.keep else uuid.uuid4().hex[:8])
        holder: dict[str, ShardWindow] = {}

        def paths() -> Iterator[tuple[str, int]]:
            window = ShardWindow(self.store, shards, directory, ahead=self.window,
                                 parallel=min(FETCH_THREADS, self.window), keep=self.keep)
            holder["window"] = self.last_window = window
            for k in range(len(shards)):
                yield window.path(k), k

        def release(k) -> bool:
            holder["window"].release(int(k))
            return True

        def shard_records(path, k):
            records = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
            records = records.map(lambda r: (r, k))
            # An end marker: when it comes out of the interleave, shard k has been read whole.
            return records.concatenate(tf.data.Dataset.from_tensors((tf.constant(b""), -k - 1)))

        def on_end_marker(record, k):
            done = tf.cond(k < 0, lambda: tf.py_function(release, [-k - 1], tf.bool),
                           lambda: tf.constant(False))
            return record, k, done

        ds = tf.data.Dataset.from_generator(
            paths, output_signature=(tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int64)))
        cycle = max(1, min(CYCLE_LENGTH, len(shards)))
        # Not num_parallel_calls: a parallel interleave opens ~3 cycles of shards ahead, which
        # would triple the window on scratch; the shards are local files by now (the fetcher
        # downloads in parallel), and decoding, the costly part, is parallel below.
        ds = ds.interleave(shard_records, cycle_length=cycle, block_length=1)
        ds = ds.map(on_end_marker)  # sequential: sees every marker once, in order
        return ds.filter(_is_record).map(_record_only)

    def batches(self, cfg, batch_size: int, *, training: bool, epoch: int = 0, skip_examples: int = 0,
                augment=None):
        """One epoch's batches (see the module docstring for the order of the stages)."""
        import tensorflow as tf

        ds = self.records(epoch, training)
        if training:
            ds = ds.shuffle(self._shuffle_buffer(), seed=cfg.seed + epoch, reshuffle_each_iteration=False)
        if skip_examples:
            ds = ds.skip(skip_examples)  # still encoded: skipping decodes nothing
        ds = ds.map(decode_record(cfg.image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=False)
        if augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds


def _is_record(record, k, done):
    return k >= 0  # not an end marker


def _record_only(record, k, done):
    return record


def open_packed(store, manifest: Manifest, scratch: Path, window: int) -> dict[str, PackedSource]:
    """A ``PackedSource`` per split."""
    return {split: PackedSource(store, manifest, split, scratch, window=window) for split in SPLITS}


@contextlib.contextmanager
def stream_errors(uri: str) -> Iterator[None]:
    """Turn ``tf.data`` failures of a packed stream into one-line DataErrors (exit 3).

    A fetcher thread's error (a damaged shard: exit 3; storage down: exit 1) reaches the
    training loop wrapped in a TensorFlow error; the original, recorded in ``FAILURES``, is
    raised instead. Any other
    TensorFlow data error (an undecodable image, a corrupt record) names the dataset.
    """
    import tensorflow as tf

    del FAILURES[:]
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.UnknownError,
            tf.errors.OutOfRangeError, tf.errors.NotFoundError) as exc:
        if FAILURES:
            raise FAILURES[-1] from None
        first = (exc.message or str(exc)).strip().splitlines()[0][:300]
        raise DataError(f"packed dataset {uri}: {first}") from None
