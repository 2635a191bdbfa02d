"""Image files: opened only in the formats the docs list, size-checked from the header before
decoding, decoded and resized in parallel; every skipped file is counted by reason.

A bad file is never fatal here: ``trainer.data.dataset`` decides from the counts whether the run fails
(``max_bad_image_fraction``).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trainer.core import preemption

log = logging.getLogger(__name__)


def parallel_map(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on a thread pool (image I/O and PIL decoding release the GIL).

    On an exception (SIGTERM arrives as one) the queued items are cancelled, not worked off.
    """

    pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4))
    try:  # once a stop is requested the rest is skipped, and Preempted raised right after
        out = list(pool.map(lambda item: None if preemption.requested() else fn(item), items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    preemption.check()
    return out


# Pillow may open only the formats the docs list, whatever a file's extension says.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
MAX_WARNINGS = 10  # per-image skip warnings logged per dataset; the rest are only counted


class Skips:
    """Counts skipped images by reason; logs the first few, then one summary line."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, path: Path, reason: str, detail: str) -> None:
        with self._lock:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            first = sum(self.reasons.values()) <= MAX_WARNINGS
        if first:
            log.warning("skipping image %s: %s", path, detail)

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items()))


def _open_checked(path: Path, max_pixels: int, skips: Skips):
    """Open ``path`` reading only its header; None (and counted) if unsupported or too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path, formats=PIL_FORMATS)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        skips.add(path, "unreadable or not JPEG/PNG/BMP/GIF", str(exc))
        return None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        skips.add(path, f"larger than max_image_pixels={max_pixels}",
                  f"{width}x{height} pixels exceeds max_image_pixels={max_pixels}")
        return None
    return img


def _decode_one(path: Path, size: int, max_pixels: int, skips: Skips) -> np.ndarray | None:
    """Decode and resize one image to [size, size, 3] uint8; None if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    img = _open_checked(path, max_pixels, skips)
    if img is None:
        return None
    try:
        with img:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
            rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        skips.add(path, "unreadable or not JPEG/PNG/BMP/GIF", str(exc))
        return None


def decode_all(files: list[Path], labels: np.ndarray, size: int, max_pixels: int,
                skips: Skips) -> tuple[np.ndarray, list[int]]:
    """Decode in a thread pool (PIL releases the GIL); returns images and the indices kept."""
    decoded = parallel_map(lambda p: _decode_one(p, size, max_pixels, skips), files)
    ok = [i for i, img in enumerate(decoded) if img is not None]
    images = np.stack([decoded[i] for i in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)
    return images, ok


def _verify_one(path: Path, max_pixels: int, skips: Skips) -> bool:
    from PIL import Image, UnidentifiedImageError

    img = _open_checked(path, max_pixels, skips)
    if img is None:
        return False
    try:
        with img:
            img.verify()
        return True
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        skips.add(path, "unreadable or not JPEG/PNG/BMP/GIF", str(exc))
        return False


def verify_all(files: list[Path], max_pixels: int, skips: Skips) -> list[int]:
    """Check every file's header and structure without a full decode (the streaming path);
    returns the indices of the good ones."""
    good = parallel_map(lambda p: _verify_one(p, max_pixels, skips), files)
    return [i for i, g in enumerate(good) if g]
