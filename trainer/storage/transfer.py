"""Moving objects between a bucket and the local disk, many at a time.

``parallel`` runs one transfer per object on a thread pool (small objects are latency-bound:
threads overlap the round trips) and logs progress; ``download`` writes atomically (a
temporary name, then a rename); ``relative_names`` is the gate every listed object name passes
before it becomes a local path.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import TypeVar

from google.cloud import storage

from trainer.core.errors import DataError
from trainer.core.quoting import brief
from trainer.storage import gcs
from trainer.storage.uri import check_relative, join

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 5.0
NAME_MAX_BYTES = 255  # longest file name (one path segment) Linux filesystems store
_T = TypeVar("_T")


def parallel(
    fn: Callable[[_T], int], items: list[_T], workers: int, what: str, total_bytes: int
) -> None:
    """Run ``fn(item) -> bytes moved`` over ``items`` on a thread pool, logging progress.

    The first failure cancels what has not started and is re-raised.
    """
    if not items:
        return
    start = last = time.monotonic()
    done = moved = 0
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="gcs") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in as_completed(futures):
                moved += future.result()
                done += 1
                now = time.monotonic()
                finished = done == len(items)
                if now - last >= PROGRESS_EVERY_SECONDS or finished:
                    last = now
                    rate = done / max(now - start, 1e-6)
                    level = logging.INFO if not finished or len(items) >= 100 else logging.DEBUG
                    log.log(
                        level,
                        "%s: %d/%d objects, %s/%s, %.0f objects/s",
                        what, done, len(items), size_text(moved), size_text(total_bytes), rate,
                    )
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def size_text(n: float) -> str:
    """``812 B``, ``3.4 MB``, ``1200.0 GB`` (decimal units, GB at most)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def download(blob: storage.Blob, dest: Path) -> int:
    """Download ``blob`` to ``dest`` atomically (a temporary name, then rename); returns its size.

    The client verifies the checksum; a listed blob carries its generation, so exactly the
    listed version is fetched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        blob.download_to_filename(str(tmp), retry=gcs.RETRY)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return blob.size if blob.size is not None else dest.stat().st_size


def upload(bucket: storage.Bucket, path: Path, name: str, *, only_new: bool = False) -> int:
    """Upload one file to object ``name``; returns its size.

    Plain uploads overwrite and are retried unconditionally (the retry writes the same bytes);
    ``only_new`` makes the write conditional on the object not existing (``if_generation_match=0``).
    """
    blob = bucket.blob(name)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    blob.upload_from_filename(
        str(path), content_type=content_type, retry=gcs.RETRY, if_generation_match=0 if only_new else None
    )
    return path.stat().st_size


def upload_files(bucket: storage.Bucket, root: Path, files: list[str], name_of: Callable[[str], str],
                 workers: int, what: str, *, only_new: bool = False) -> None:
    """Upload each ``root/f`` of ``files`` to the object ``name_of(f)``, in parallel."""
    parallel(lambda f: upload(bucket, root / f, name_of(f), only_new=only_new), files, workers, what,
             sum((root / f).stat().st_size for f in files))


def files_under(root: Path, skip_hidden: bool = False) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` (symlinks are not followed)."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            p = Path(dirpath) / n
            if (skip_hidden and n.startswith(".")) or not p.is_file() or p.is_symlink():
                continue
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


def relative_names(blobs: list[storage.Blob], list_prefix: str, uri: str) -> dict[str, storage.Blob]:
    """relative name -> blob; DataError naming the first unsafe or conflicting object name."""
    wanted: dict[str, storage.Blob] = {}
    bad: list[tuple[str, str]] = []
    for blob in blobs:
        rel = blob.name[len(list_prefix):]
        try:
            check_relative(rel)
        except ValueError as exc:
            bad.append((blob.name, str(exc)))
            continue
        wanted[rel] = blob
    if bad:
        name, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"refusing to download {uri}: object name {name!r} {reason}{more}; object names must be "
            "relative paths without '.', '..' or empty segments"
        )
    too_long = sorted(b.name for rel, b in wanted.items()
                      if any(len(part.encode()) > NAME_MAX_BYTES for part in rel.split("/")))
    if too_long:
        more = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
        raise DataError(
            f"refusing to download {uri}: object name {brief(too_long[0])}{more} has a path segment "
            f"longer than {NAME_MAX_BYTES} bytes, which no local filesystem can store; rename it")
    dirs = {str(parent) for rel in wanted for parent in PurePosixPath(rel).parents}
    clash = sorted(rel for rel in wanted if rel in dirs)
    if clash:
        raise DataError(
            f"refusing to download {uri}: {join(list_prefix.rstrip('/'), clash[0])!r} is both an object "
            "and a folder of other objects"
        )
    return wanted
