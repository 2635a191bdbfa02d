"""Datasets: discovery, splits and decoding (the ``tf.data`` pipeline is ``trainer.data.pipeline``).

A dataset is either built in (``builtin:digits``: scikit-learn's 8x8 handwritten digits, real
data that ships with a dependency, no download) or a directory with one subfolder per class,
optionally split into ``train/``, ``val/`` and ``test/`` subfolders, each holding the same class
subfolders (Keras ``image_dataset_from_directory`` layout). Missing splits are carved out of the
training images by a seeded hash of each file's relative path (``assign_splits``): a file's
split never depends on the other files, so a growing dataset keeps its test images in test.

Images are decoded once, in parallel, resized to ``image_size`` and kept in memory as ``uint8``
when they fit (``cache: auto``); a corrupt or unreadable file is skipped and counted, and the
run fails past ``max_bad_image_fraction``. Normalization (``/255``) happens inside the model, so
the exported model takes raw pixels. Larger datasets are streamed from disk by ``tf.data``
(``trainer.data.pipeline``). Reading image files is ``trainer.data.images``; the built-in data is
``trainer.data.builtin``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import storage
from trainer.config import TrainConfig
from trainer.core.errors import DataError
from trainer.data import fingerprint, packed
from trainer.data.builtin import digits_arrays, resize_gray
from trainer.data.images import Skips, decode_all, verify_all
from trainer.data.packed import open_packed
from trainer.data.packed import stream_errors as packed_stream_errors

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
MEMORY_BUDGET_FRACTION = 0.25  # share of the pod's memory limit (or RAM) the decoded cache may take


@dataclass(frozen=True)
class Split:
    """One split: decoded pixels in memory, file paths to stream, or a packed stream (one of them)."""

    labels: np.ndarray  # int32 [N] (empty for a packed stream: the labels are in its records)
    images: np.ndarray | None = None  # uint8 [N, S, S, 3]
    paths: tuple[str, ...] | None = None
    stream: object | None = None  # a trainer.data.packed.PackedSource
    keys: tuple[str, ...] | None = None  # each image's path relative to the dataset root (promotion)

    def __len__(self) -> int:
        return len(self.stream) if self.stream is not None else int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    description: str
    skipped_images: int = 0
    uri: str = ""
    split_rule: dict | None = None  # how files were assigned to splits (see ``split_rule``)
    fingerprint: str = ""  # the images and labels used (``trainer.data.fingerprint``)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
# Splits


def split_position(key: str, seed: int) -> float:
    """Where ``key`` (a file's path relative to its split root) falls in [0, 1): a seeded hash.

    A pure function of the name and the seed: nothing else in the dataset moves it.
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    keys: list[str], labels: np.ndarray, cfg: TrainConfig, have_val: bool, have_test: bool
) -> np.ndarray:
    """The split of every file carved out of the training folder: an array of "train"/"val"/"test".

    A file lands in test when its ``split_position`` is below ``test_fraction``, in val when it
    is below ``test_fraction + val_fraction``, else in train (a split that has its own folder
    takes nothing: its band stays in train). So a file's split depends only on its relative
    path and the seed, never on how many other files there are: adding images never moves an
    existing test image into train, and nightly models stay comparable on their test split.

    Shares per class are the fractions in expectation, not exactly (a class of n images has no
    test image with probability ``(1 - test_fraction)**n``). Two guarantees of the previous
    stratified split are kept without breaking that rule:

    * a class whose files all hash out of train gets its highest-hashed file back in train;
    * a class of 3 or more files with no test file gets its lowest-hashed val file as test
      (moved from val, never from train).

    Either only happens to a class with no file in the band it lacks, and undoes itself (back
    to val or test, never from test to train) once one arrives.
    """
    pos = np.array([split_position(k, cfg.seed) for k in keys], np.float64)
    out = np.full(len(keys), "train", dtype=object)
    if not have_val:
        out[(pos >= cfg.test_fraction) & (pos < cfg.test_fraction + cfg.val_fraction)] = "val"
    if not have_test:
        out[pos < cfg.test_fraction] = "test"
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if not np.any(out[idx] == "train"):
            out[idx[np.argmax(pos[idx])]] = "train"
        if not have_test and len(idx) >= 3 and not np.any(out[idx] == "test"):
            val = idx[out[idx] == "val"]
            if len(val):
                out[val[np.argmin(pos[val])]] = "test"
    return out


SPLIT_SCHEME = "blake2b-position-v1"  # split_position + assign_splits; bump if either changes


def split_rule(cfg: TrainConfig, *, have_val: bool, have_test: bool) -> dict:
    """How this run assigned files to splits, stored with a promoted model so that a later run
    can tell which of its images that model never trained on (``trainer/promote.py``)."""
    return {"scheme": SPLIT_SCHEME, "seed": cfg.seed, "test_fraction": cfg.test_fraction,
            "val_fraction": cfg.val_fraction, "val_folder": have_val, "test_folder": have_test}


def never_trained_on(key: str, rule: dict) -> bool | None:
    """Whether a run with split ``rule`` kept the image ``key`` (path relative to the dataset
    root) out of training and validation; None when the rule's scheme is unknown.

    Exact for files in split folders and for carved files, except the rare per-class fix-ups
    of ``assign_splits`` (a class with no train or no test file), which a caller can settle
    with the stored list of that run's test keys.
    """
    if rule.get("scheme") != SPLIT_SCHEME:
        return None
    top, _, rest = key.partition("/")
    if top == "test" and rule["test_folder"]:
        return True
    if top == "val" and rule["val_folder"]:
        return False
    if top == "train" and (rule["test_folder"] or rule["val_folder"]):
        key = rest  # carved from train/: positions are relative to the training root
    if rule["test_folder"]:
        return False  # with a test/ folder nothing was carved into test
    return split_position(key, rule["seed"]) < rule["test_fraction"]


def _carve(
    keys: list[str], labels: np.ndarray, cfg: TrainConfig, have_val: bool, have_test: bool
) -> dict[str, np.ndarray]:
    """Index arrays of the splits carved out of the training folder (see ``assign_splits``)."""
    where = assign_splits(keys, labels, cfg, have_val, have_test)
    out = {"train": np.flatnonzero(where == "train")}
    if not have_val:
        out["val"] = np.flatnonzero(where == "val")
    if not have_test:
        out["test"] = np.flatnonzero(where == "test")
    return out


# ---------------------------------------------------------------------------------------------
# Directories


def _list_images(class_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(class_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(
            Path(root) / n for n in sorted(names)
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        )
    return files


def _class_dirs(root: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def discover(root: Path) -> tuple[tuple[str, ...], dict[str, tuple[list[Path], np.ndarray]]]:
    """Class names and, per split present on disk, (files, labels). Raises DataError when empty."""
    if not root.is_dir():
        raise DataError(f"dataset directory {str(root)!r} does not exist")
    top = _class_dirs(root)
    split_dirs = {s: top[s] for s in SPLITS if s in top}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root}: has {'/'.join(split_dirs)} folders but no train/ folder")
    layout = split_dirs or {"train": root}
    class_names = tuple(_class_dirs(layout["train"]))
    if not class_names:
        raise DataError(f"{layout['train']}: no class subfolders (expected one folder per class)")
    if len(class_names) < 2:
        raise DataError(f"{layout['train']}: only one class ({class_names[0]!r}); need at least 2")
    index = {name: i for i, name in enumerate(class_names)}
    found = {}
    for split, split_root in layout.items():
        classes = _class_dirs(split_root)
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise DataError(f"{split_root}: classes {unknown} are not in the training split")
        files, labels = [], []
        for name in class_names:
            imgs = _list_images(classes[name]) if name in classes else []
            if split == "train" and not imgs:
                raise DataError(
                    f"class {name!r} has no images in {classes.get(name, split_root / name)}"
                    f" (supported: {', '.join(IMAGE_EXTENSIONS)})"
                )
            files.extend(imgs)
            labels.extend([index[name]] * len(imgs))
        found[split] = (files, np.asarray(labels, np.int32))
    return class_names, found


CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit_bytes() -> int:
    """The memory this process may use: the container's cgroup limit if set, else physical RAM."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        limit = 8 << 30
    for path in CGROUP_LIMIT_FILES:  # cgroup v2, then v1 ("max" or a huge number = no limit)
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            limit = min(limit, int(raw))
        break
    return limit


def _fits_in_memory(num_images: int, size: int) -> bool:
    return num_images * size * size * 3 <= MEMORY_BUDGET_FRACTION * memory_limit_bytes()


def _check_bad(skipped: int, total: int, cfg: TrainConfig, where: str, reasons: str = "") -> None:
    if total and skipped / total > cfg.max_bad_image_fraction:
        raise DataError(
            f"{skipped} of {total} images in {where} are unreadable ({reasons or 'skipped'}), more than"
            f" max_bad_image_fraction={cfg.max_bad_image_fraction}; fix or remove them"
        )


def split_files(root: Path, cfg: TrainConfig) -> tuple[tuple[str, ...], dict[str, tuple[list[Path], np.ndarray]]]:
    """Class names and every split's (files, labels): the folders on disk, plus the splits they
    lack carved out of ``train`` by ``assign_splits`` on each file's path relative to the
    training root (``cat/1.jpg``), before any image is read."""
    class_names, found = discover(root)
    files, labels = found["train"]
    base = root / "train" if (root / "train").is_dir() else root  # as discover() decides
    keys = [p.relative_to(base).as_posix() for p in files]
    for name, idx in _carve(keys, labels, cfg, "val" in found, "test" in found).items():
        found[name] = ([files[i] for i in idx], labels[idx])
    return class_names, found


def load_directory(root: Path, cfg: TrainConfig) -> Dataset:
    class_names, found = split_files(root, cfg)
    size = cfg.image_size
    total_files = sum(len(f) for f, _ in found.values())
    in_memory = cfg.cache == "memory" or (cfg.cache == "auto" and _fits_in_memory(total_files, size))
    splits: dict[str, Split] = {}
    skipped = 0
    skips = Skips()
    used: list[tuple[str, int, Path]] = []  # (key, label, file) of every image used: the fingerprint
    for split, (files, labels) in found.items():
        if in_memory:
            images, ok = decode_all(files, labels, size, cfg.max_image_pixels, skips)
        else:
            images, ok = None, verify_all(files, cfg.max_image_pixels, skips)
        skipped += len(files) - len(ok)
        used += [(files[i].relative_to(root).as_posix(), int(labels[i]), files[i]) for i in ok]
        splits[split] = Split(labels=labels[ok], images=images,
                              paths=None if in_memory else tuple(str(files[i]) for i in ok),
                              keys=tuple(files[i].relative_to(root).as_posix() for i in ok))
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d: %s", skipped, total_files, skips.summary())
    _check_bad(skipped, total_files, cfg, str(root), skips.summary())
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise DataError(f"{root}: the {name} split has no images")
    counts = np.bincount(splits["train"].labels, minlength=len(class_names))
    for name, n in zip(class_names, counts):
        if n == 0:
            raise DataError(f"class {name!r} has no readable images in the training split")
    layout = "train/val/test folders" if (root / "train").is_dir() else "class folders"
    desc = (f"{root} ({layout}, {len(class_names)} classes, "
            f"{'decoded in memory' if in_memory else 'streamed from disk'})")
    folders = (root / "train").is_dir()  # as discover() decides
    rule = split_rule(cfg, have_val=folders and (root / "val").is_dir(),
                      have_test=folders and (root / "test").is_dir())
    return Dataset(class_names, splits["train"], splits["val"], splits["test"], desc, skipped,
                   split_rule=rule, fingerprint=fingerprint.of_files(class_names, used))


def load_builtin(name: str, cfg: TrainConfig) -> Dataset:
    if name != "digits":
        raise DataError(f"unknown built-in dataset {name!r}; available: digits")
    raw, labels, class_names = digits_arrays()
    images = resize_gray(raw, cfg.image_size)
    keys = [f"{class_names[label]}/{i:05d}.png" for i, label in enumerate(labels)]  # as exported
    idx = _carve(keys, labels, cfg, have_val=False, have_test=False)
    split = {k: Split(labels=labels[v], images=images[v], keys=tuple(keys[i] for i in v))
             for k, v in idx.items()}
    desc = f"builtin:digits (scikit-learn, {len(labels)} images 8x8 upscaled to {cfg.image_size})"
    return Dataset(class_names, split["train"], split["val"], split["test"], desc,
                   split_rule=split_rule(cfg, have_val=False, have_test=False),
                   fingerprint=fingerprint.of_arrays(f"builtin:{name}", class_names, raw, labels))


def load_dataset(cfg: TrainConfig, local_root: Path | None) -> Dataset:
    """The dataset named by ``cfg.data``; ``local_root`` is its local directory (None if built in)."""
    ds = load_builtin(cfg.builtin, cfg) if cfg.builtin is not None else load_directory(local_root, cfg)
    _log_dataset(ds)
    return ds


def _log_dataset(ds: Dataset) -> None:
    log.info(
        "dataset %s: %d train / %d val / %d test images, classes: %s",
        ds.description, len(ds.train), len(ds.val), len(ds.test), ", ".join(ds.class_names),
    )


def open_dataset(cfg: TrainConfig, scratch: Path) -> Dataset:
    """The dataset named by ``cfg.data``: built in, packed (streamed, see ``trainer/data/packed.py``),
    or class folders (a bucket prefix is downloaded under ``scratch/datasets`` first)."""
    if cfg.builtin is not None:
        return load_dataset(cfg, None)

    store = storage.open_store(cfg.data)
    manifest = packed.read_manifest(store)
    if manifest is None:
        return load_dataset(cfg, storage.fetch_dataset(cfg.data, scratch / "datasets"))
    ds = load_packed(cfg, store, manifest, scratch)
    _log_dataset(ds)
    return ds


def load_packed(cfg: TrainConfig, store, manifest, scratch: Path) -> Dataset:
    """A packed dataset's splits as streams; its splits were fixed when it was packed."""

    if (manifest.seed, manifest.val_fraction, manifest.test_fraction) != (
            cfg.seed, cfg.val_fraction, cfg.test_fraction):
        log.info("%s: using the splits fixed when it was packed (seed %d, val %.2f, test %.2f), "
                 "not this run's seed/val_fraction/test_fraction", store.uri, manifest.seed,
                 manifest.val_fraction, manifest.test_fraction)
    sources = open_packed(store, manifest, scratch, cfg.stream_window)
    splits = {name: Split(labels=np.zeros(0, np.int32), stream=src) for name, src in sources.items()}
    shards = sum(len(info.shards) for info in manifest.splits.values())
    size = sum(info.bytes for info in manifest.splits.values())
    desc = (f"{store.uri} (packed, {len(manifest.class_names)} classes, {shards} shards, "
            f"{size / 1e6:.1f} MB, streamed)")
    return Dataset(manifest.class_names, splits["train"], splits["val"], splits["test"], desc,
                   manifest.skipped_images, uri=store.uri, fingerprint=fingerprint.of_packed(manifest.fingerprint))


def stream_errors(dataset: Dataset):
    """A context in which a packed stream's failures become one-line DataErrors (exit 3)."""
    if dataset.train.stream is None:
        return contextlib.nullcontext()

    return packed_stream_errors(dataset.uri)
