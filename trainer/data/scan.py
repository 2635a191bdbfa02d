"""The facts about a dataset that its ``auto`` config values depend on: the images' native size,
from the headers of a sample of its files (no decoding) or from a packed dataset's manifest.
The rules that turn those facts into values are ``trainer.config.auto``'s."""

from __future__ import annotations

import statistics
from pathlib import Path

from trainer import storage
from trainer.config import TrainConfig, auto
from trainer.config.auto import NativeSize, Resolved, is_resolved, size_range
from trainer.data import mirror, packed
from trainer.data.dataset import discover, split_files

SCAN_SAMPLE = 256  # image headers read to find the native size
PACKED_UNPROBED = "a packed dataset is not probed for mirror symmetry (its images are streamed)"


def _header_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None  # the decoding pass counts and reports unreadable files


def scan(root: Path, sample: int = SCAN_SAMPLE) -> NativeSize | None:
    """The native size of a class-folder dataset, from the headers of an even sample of its files."""
    _, found = discover(root)
    files = [f for split_files, _ in found.values() for f in split_files]
    if not files:
        return None
    step = max(1, len(files) // sample)
    sizes = [s for s in (_header_size(f) for f in files[::step][:sample]) if s]
    if not sizes:
        return None
    shorter = [min(w, h) for w, h in sizes]
    return NativeSize(int(statistics.median(shorter)), len(sizes), min(shorter), max(shorter))


def fit_to_source(cfg: TrainConfig, scratch: Path) -> Resolved:
    """``fit_to_data`` for ``cfg.data`` wherever it is: built in, packed (the image sizes its
    manifest recorded when it was packed) or class folders (fetched first)."""
    if is_resolved(cfg) or cfg.builtin is not None:
        return fit_to_data(cfg, None)
    manifest = packed.read_manifest(storage.open_store(cfg.data))
    if manifest is not None:
        n = manifest.native_size
        if n:
            return auto.fit(cfg, NativeSize(n["median_shorter_side"], n["images"], n["smallest"], n["largest"]),
                            f"median shorter side of the {n['images']} packed images,"
                            f" {n['smallest']}-{n['largest']} px (manifest)", unprobed=PACKED_UNPROBED)
        size = size_range(cfg.model)[1]
        return auto.fit(cfg, NativeSize(size, 0, size, size), "a packed dataset that records no image sizes",
                        unprobed=PACKED_UNPROBED)
    return fit_to_data(cfg, storage.fetch_dataset(cfg.data, scratch / "datasets"))


def fit_to_data(cfg: TrainConfig, root: Path | None) -> Resolved:
    """Resolve the image-dependent ``auto`` values from the dataset at ``root`` (None = built in)."""
    if is_resolved(cfg):
        return Resolved(cfg, {})
    if root is None:
        return auto.resolve(cfg)
    native = scan(root)
    if native is None:  # nothing readable: the data loader reports it with exit code 3
        native = NativeSize(size_range(cfg.model)[1], 0, 0, 0)
        where = "no readable image found"
    else:
        where = (f"median shorter side of {native.sampled} sampled images,"
                 f" {native.smallest}-{native.largest} px")
    probe = None
    if cfg.augment.flip is None and native.sampled:
        files, labels = split_files(root, cfg)[1]["train"]  # the training split only, never val/test
        probe = mirror.probe_files(list(files), list(labels))
    return auto.fit(cfg, native, where, probe, unprobed="too few readable images of 2+ classes to probe")
