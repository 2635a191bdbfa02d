"""A bucket prefix (a dataset) mirrored into a local cache, for ``--data gs://...``.

The cache lives in ``<cache_dir>/gcs/<bucket_prefix-hash>/files``; a journal next to it records
each object's generation and size, so a restarted run downloads only what changed, and files
whose objects were deleted from the bucket are removed. Object names that would land outside the
cache are refused (``transfer.relative_names``), and a dataset larger than the free disk fails
before the download, not in the middle of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

from google.cloud import storage

from trainer.core.errors import ConfigError, DataError, StorageError
from trainer.storage import gcs, transfer
from trainer.storage.transfer import size_text
from trainer.storage.uri import parse_uri, slug

log = logging.getLogger(__name__)

FREE_SPACE_MARGIN = 0.95  # use at most this share of the free disk for the dataset cache


def download_prefix(uri: str, cache_dir: Path, workers: int = gcs.DEFAULT_WORKERS) -> Path:
    """A local directory mirroring every object under ``uri`` (a dataset), downloaded in parallel.

    Raises DataError for a missing bucket, an empty prefix or an object name that would escape
    the cache (``..``, ``/abs``, ``a//b``); see the module docstring for the cache's layout.
    """
    bucket_name, prefix = parse_uri(uri)
    root = Path(cache_dir) / "gcs" / slug(bucket_name, prefix)
    files_dir, journal_path = root / "files", root / "objects.jsonl"
    wanted = _list_dataset(uri, bucket_name, prefix)

    cached = _read_journal(journal_path)
    todo = [(rel, b) for rel, b in wanted.items() if not _is_cached(files_dir / rel, cached.get(rel), b)]
    need = sum(b.size or 0 for _, b in todo)
    _check_free_space(root, need, uri)
    log.info(
        "dataset %s: %d objects (%s); %d already cached in %s, downloading %d (%s) with %d threads",
        uri, len(wanted), size_text(sum(b.size or 0 for b in wanted.values())),
        len(wanted) - len(todo), files_dir, len(todo), size_text(need), workers,
    )
    files_dir.mkdir(parents=True, exist_ok=True)
    _download_journaled(uri, todo, files_dir, journal_path, workers, need)
    _prune(files_dir, set(wanted))
    tmp = journal_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps([r, b.generation, b.size]) + "\n" for r, b in sorted(wanted.items())))
    os.replace(tmp, journal_path)
    return files_dir


def _list_dataset(uri: str, bucket_name: str, prefix: str) -> dict[str, storage.Blob]:
    """relative name -> blob for every object under the prefix; DataError when there are none."""
    list_prefix = f"{prefix}/" if prefix else ""
    with gcs.errors(f"listing {uri}", gcs.missing_bucket(bucket_name, uri, DataError, "--data")):
        blobs = [b for b in gcs.client().list_blobs(bucket_name, prefix=list_prefix, retry=gcs.RETRY)
                 if not b.name.endswith("/")]  # "folder" placeholders made by consoles
    if not blobs:
        raise DataError(
            f"no objects under {uri}: expected one folder per class, e.g. {uri.rstrip('/')}/cat/1.jpg "
            "(push one with `python -m trainer data push`)"
        )
    return transfer.relative_names(blobs, list_prefix, uri)


def _download_journaled(uri: str, todo: list[tuple[str, storage.Blob]], files_dir: Path,
                        journal_path: Path, workers: int, need: int) -> None:
    """Download ``todo`` into ``files_dir``, appending each finished object to the journal."""
    lock = threading.Lock()
    inside = files_dir.resolve()
    with open(journal_path, "a", encoding="utf-8") as journal:

        def fetch(item: tuple[str, storage.Blob]) -> int:
            rel, blob = item
            dest = files_dir / rel
            if not dest.parent.resolve().is_relative_to(inside):  # a symlinked folder in the cache
                raise DataError(f"refusing to write {dest}: it resolves outside {files_dir}")
            size = transfer.download(blob, dest)
            with lock:
                journal.write(json.dumps([rel, blob.generation, blob.size]) + "\n")
                journal.flush()
            return size

        what = f"downloading {uri}"
        with gcs.errors(what, lambda: StorageError(f"{what}: an object was deleted or replaced during the download; run again")):
            transfer.parallel(fetch, todo, workers, what, need)


def _read_journal(path: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            rel, generation, size = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut short by a kill
        out[rel] = (generation, size)
    return out


def _is_cached(path: Path, journal_entry: tuple[int, int] | None, blob: storage.Blob) -> bool:
    if journal_entry != (blob.generation, blob.size):
        return False
    try:
        return path.stat().st_size == blob.size
    except OSError:
        return False


def _check_free_space(root: Path, need: int, uri: str) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free * FREE_SPACE_MARGIN:
        raise ConfigError(
            f"dataset {uri} needs {size_text(need)} more in the cache at {root} but only {size_text(free)} is free; "
            "give the pod a larger cache volume"
        )


def _prune(files_dir: Path, keep: set[str]) -> None:
    """Delete files (and emptied folders) not in ``keep``: objects gone from the bucket, partials."""
    removed = 0
    for dirpath, dirs, names in os.walk(files_dir, topdown=False):
        for n in names:
            p = Path(dirpath) / n
            if p.relative_to(files_dir).as_posix() not in keep:
                p.unlink()
                removed += 1
        if Path(dirpath) != files_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)
    if removed:
        log.info("removed %d cached files no longer in the bucket", removed)
