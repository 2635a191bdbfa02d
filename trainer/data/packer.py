"""``python -m trainer data pack SRC DEST``: write a dataset as packed shards (``trainer/data/packed.py``).

SRC is ``builtin:digits``, a local class-folder dataset, or one in a bucket (downloaded into
scratch first, incrementally); DEST is a local directory or ``gs://bucket/prefix``.

1. The files are listed and split exactly as training on the folder would split them
   (``data.split_files``: the ``train/ val/ test/`` folders, else the hash of each file's
   path and the seed), so the splits are fixed now, once.
2. A plan: each split's files in a seeded random order (every shard mixes the classes), cut
   into shards of about ``shard_mb`` MB by file size. The plan has an id (a hash of every
   file's name and size and the options).
3. Each shard is written on local scratch (images read and fully decoded once to check them,
   stored as their original bytes), checksummed, copied to DEST, then recorded in
   ``DEST/.pack/<shard>.json``. Only one shard is on local disk at a time.
4. ``DEST/manifest.json`` is written last, then ``DEST/.pack/`` is removed.

A pack that is killed leaves no manifest, so nothing reads it as a dataset (training refuses it
with a clear line). Running the same command again resumes: shards already recorded for the
same plan id are kept, the rest written. A changed source gives a new plan and a fresh pack.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trainer import storage
from trainer.config import BUILTIN_PREFIX, load_config
from trainer.core.errors import ConfigError, DataError
from trainer.core.quoting import brief
from trainer.data.builtin import export_builtin
from trainer.data.dataset import split_files
from trainer.data.packed import (
    MANIFEST,
    PROGRESS_DIR,
    SHARD_SUFFIX,
    SPLITS,
    VERSION,
    Manifest,
    SplitInfo,
    example_bytes,
    shard_name,
)
from trainer.data.shard_window import ShardRef, file_sha256

log = logging.getLogger(__name__)

DEFAULT_SHARD_MB = 128
RECORD_OVERHEAD_BYTES = 120  # TFRecord framing + Example fields around an image's bytes
PROGRESS_EVERY_SECONDS = 5.0
FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".bmp": "bmp", ".gif": "gif"}


@dataclass(frozen=True)
class PackOptions:
    shard_mb: float = DEFAULT_SHARD_MB
    seed: int = 1337
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_bad_image_fraction: float = 0.01
    workers: int = 8
    create_bucket: bool = False


@dataclass(frozen=True)
class _PlannedShard:
    split: str
    index: int
    files: tuple[tuple[str, int, int], ...]  # (absolute path, label, size)
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def _check_image(path: str) -> tuple[bytes, int] | None:
    """The file's bytes and shorter side if it decodes completely (a truncated JPEG does not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            shorter = min(img.size)
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            img.load()
        return data, shorter
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping unreadable image %s: %s", path, exc)
        return None


def _source_root(src: str, scratch: Path, tmp: Path) -> Path:
    if src.startswith(BUILTIN_PREFIX):

        root = tmp / "builtin"
        count = export_builtin(src[len(BUILTIN_PREFIX):], root)
        log.info("wrote %s as %d PNG files", src, count)
        return root
    return storage.fetch_dataset(src, scratch / "datasets")


def plan_shards(root: Path, cfg, shard_bytes: int) -> tuple[tuple[str, ...], list[_PlannedShard]]:
    """Class names and the shards to write: per split, files in a seeded order, cut by size."""

    class_names, found = split_files(root, cfg)
    shards: list[_PlannedShard] = []
    base = root / "train" if (root / "train").is_dir() else root
    for s_index, split in enumerate(SPLITS):
        files, labels = found[split]
        split_root = root / split if (root / split).is_dir() and split != "train" else base
        order = np.random.default_rng([cfg.seed, s_index]).permutation(len(files))
        current: list[tuple[str, int, int]] = []
        keys: list[str] = []
        size = 0
        for i in order:
            path = files[i]
            n = path.stat().st_size
            if current and size + n + RECORD_OVERHEAD_BYTES > shard_bytes:
                shards.append(_PlannedShard(split, sum(s.split == split for s in shards),
                                            tuple(current), tuple(keys)))
                current, keys, size = [], [], 0
            current.append((str(path), int(labels[i]), n))
            keys.append(path.relative_to(split_root).as_posix())
            size += n + RECORD_OVERHEAD_BYTES
        if current:
            shards.append(_PlannedShard(split, sum(s.split == split for s in shards), tuple(current), tuple(keys)))
    return class_names, shards


def _plan_id(class_names, shards: list[_PlannedShard], opts: PackOptions) -> str:
    body = [VERSION, list(class_names), opts.seed, opts.val_fraction, opts.test_fraction,
            [[s.name, [[k, f[1], f[2]] for k, f in zip(s.keys, s.files)]] for s in shards]]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def _write_shard(shard: _PlannedShard, pool: ThreadPoolExecutor, out: Path) -> dict:
    """Write one shard's TFRecord file to ``out``; returns its record (size, checksum, counts)."""
    import tensorflow as tf

    per_class: dict[int, int] = {}
    sides: dict[int, int] = {}  # shorter side in pixels -> images (for the native size)
    images = skipped = 0
    with tf.io.TFRecordWriter(str(out)) as writer:
        for (path, label, _), key, checked in zip(shard.files, shard.keys,
                                                  pool.map(_check_image, [f[0] for f in shard.files])):
            if checked is None:
                skipped += 1
                continue
            data, shorter = checked
            sides[shorter] = sides.get(shorter, 0) + 1
            fmt = FORMATS.get(Path(path).suffix.lower(), "unknown")
            writer.write(example_bytes(data, fmt, label, key))
            per_class[label] = per_class.get(label, 0) + 1
            images += 1
    return {"name": shard.name, "bytes": out.stat().st_size, "sha256": file_sha256(out),
            "images": images, "skipped": skipped, "per_class": {str(k): v for k, v in per_class.items()},
            "shorter_sides": {str(k): v for k, v in sides.items()}}


def pack(src: str, dest: str, opts: PackOptions, scratch: Path) -> Manifest:
    """Pack ``src`` into ``dest`` (see the module docstring); returns the manifest written."""
    if opts.shard_mb <= 0:
        raise ConfigError(f"data pack: --shard-size-mb must be > 0, got {opts.shard_mb}")
    if opts.workers < 1:
        raise ConfigError(f"data pack: --workers must be >= 1, got {opts.workers}")
    cfg = load_config({"data": src, "output": dest, "seed": opts.seed, "val_fraction": opts.val_fraction,
                       "test_fraction": opts.test_fraction,
                       "max_bad_image_fraction": opts.max_bad_image_fraction})
    store = storage.open_store(dest, create_bucket=opts.create_bucket)
    if store.read_bytes(MANIFEST) is not None:
        raise ConfigError(f"{dest} already holds a packed dataset ({MANIFEST}); pack into a new "
                          "destination (packs are immutable: runs trained on this one stay reproducible)")
    foreign = sorted(n for n in store.list() if not _ours(n))
    if foreign:
        raise ConfigError(f"data pack: {brief(dest)} already holds files that are not a pack (e.g. "
                          f"{brief(foreign[0])}, {len(foreign)} in all): a class-folder dataset there "
                          "would then train on the pack; pack into a new, empty destination")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pack-", dir=scratch) as tmp_name:
        tmp = Path(tmp_name)
        root = _source_root(src, scratch, tmp)
        class_names, shards = plan_shards(root, cfg, int(opts.shard_mb * 1e6))
        plan_id = _plan_id(class_names, shards, opts)
        done = _resume_state(store, plan_id)
        total_images = sum(len(s.files) for s in shards)
        log.info("packing %s -> %s: %d images in %d shards (%s), %d already written",
                 src, dest, total_images, len(shards),
                 ", ".join(f"{sp} {sum(s.split == sp for s in shards)}" for sp in SPLITS), len(done))
        start = last = time.monotonic()
        written_images = sum(len(s.files) for s in shards if s.name in done)
        with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="pack") as pool:
            for n, shard in enumerate(shards, 1):
                if shard.name in done:
                    continue
                local = tmp / f"shard{SHARD_SUFFIX}"
                record = _write_shard(shard, pool, local)
                store.put_file(local, shard.name)
                local.unlink()
                store.write_bytes(_progress_name(shard.name), json.dumps(record).encode())
                done[shard.name] = record
                written_images += len(shard.files)
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_SECONDS or n == len(shards):
                    last = now
                    rate = (written_images) / max(now - start, 1e-6)
                    log.info("packed %d/%d shards, %d/%d images, %.0f images/s, ~%.0f s left", n, len(shards),
                             written_images, total_images, rate, (total_images - written_images) / max(rate, 1e-6))
    manifest = _manifest(src, class_names, shards, done, opts)
    _check(manifest, total_images, opts, src)
    _remove_stale_shards(store, {s.name for s in shards})
    store.write_bytes(MANIFEST, manifest.to_json().encode())
    for rel in store.list(PROGRESS_DIR):
        store.delete(rel)
    progress_dir = store.local_path(PROGRESS_DIR)
    if progress_dir is not None and progress_dir.is_dir():
        progress_dir.rmdir()
    log.info("packed %s: %d train / %d val / %d test images, %d skipped, %.1f MB; fingerprint %s",
             dest, *(manifest.splits[s].images for s in SPLITS), manifest.skipped_images,
             sum(i.bytes for i in manifest.splits.values()) / 1e6, manifest.fingerprint[:16])
    return manifest


def _ours(name: str) -> bool:
    """Whether ``name`` (relative to the destination) is a file an interrupted pack leaves."""
    split, _, rest = name.partition("/")
    return (name.startswith(PROGRESS_DIR + "/")
            or (split in SPLITS and "/" not in rest and rest.startswith(f"{split}-")
                and rest.endswith(SHARD_SUFFIX)))


def _progress_name(shard: str) -> str:
    return f"{PROGRESS_DIR}/{shard.replace('/', '__')}.json"


def _resume_state(store, plan_id: str) -> dict[str, dict]:
    """Records of the shards a killed pack of the same plan finished; starts a new plan otherwise."""
    plan_rel = f"{PROGRESS_DIR}/plan.json"
    raw = store.read_bytes(plan_rel)
    existing = store.list(PROGRESS_DIR)
    if raw is not None and json.loads(raw).get("plan") == plan_id:
        listed = store.list()
        done = {}
        for rel in existing:
            if rel == plan_rel:
                continue
            record = json.loads(store.read_bytes(rel) or b"{}")
            if record and listed.get(record["name"]) == record["bytes"]:
                done[record["name"]] = record
        if done:
            log.info("resuming an interrupted pack: %d shards already written", len(done))
        return done
    for rel in existing:
        store.delete(rel)
    store.write_bytes(plan_rel, json.dumps({"plan": plan_id}).encode())
    return {}


def _manifest(src: str, class_names, shards: list[_PlannedShard], done: dict[str, dict],
              opts: PackOptions) -> Manifest:
    splits = {}
    for split in SPLITS:
        records = [done[s.name] for s in shards if s.split == split and done[s.name]["images"]]
        per_class = {name: 0 for name in class_names}
        for r in records:
            for label, n in r["per_class"].items():
                per_class[class_names[int(label)]] += n
        splits[split] = SplitInfo(
            images=sum(r["images"] for r in records), per_class=per_class,
            shards=tuple(ShardRef(r["name"], r["bytes"], r["sha256"], r["images"]) for r in records))
    skipped = sum(r["skipped"] for r in done.values())
    manifest = Manifest(tuple(class_names), splits, opts.seed, opts.val_fraction, opts.test_fraction,
                        skipped, src, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        native_size=_native_size(done.values()))
    return Manifest(**{**manifest.__dict__, "fingerprint": manifest.computed_fingerprint()})


def _native_size(records) -> dict | None:
    """Median, smallest and largest shorter side of the packed images (for ``image_size: 0``)."""
    sides: dict[int, int] = {}
    for r in records:
        for side, n in r.get("shorter_sides", {}).items():
            sides[int(side)] = sides.get(int(side), 0) + n
    total = sum(sides.values())
    if not total:
        return None
    seen, median = 0, 0
    for side in sorted(sides):
        seen += sides[side]
        if seen * 2 >= total:
            median = side
            break
    return {"median_shorter_side": median, "smallest": min(sides), "largest": max(sides), "images": total}


def _check(manifest: Manifest, total: int, opts: PackOptions, src: str) -> None:
    skipped = manifest.skipped_images
    if total and skipped / total > opts.max_bad_image_fraction:
        raise DataError(f"{skipped} of {total} images in {src} are unreadable, more than "
                        f"max_bad_image_fraction={opts.max_bad_image_fraction}; fix or remove them")
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, total)
    for split in SPLITS:
        if not manifest.splits[split].images:
            raise DataError(f"{src}: the {split} split has no images")
    for name, n in manifest.splits["train"].per_class.items():
        if n == 0:
            raise DataError(f"class {name!r} has no readable images in the training split")


def _remove_stale_shards(store, keep: set[str]) -> None:
    """Shards of an earlier, different plan that this one does not overwrite."""
    for rel in store.list():
        if rel.endswith(SHARD_SUFFIX) and rel.split("/")[0] in SPLITS and rel not in keep:
            store.delete(rel)
