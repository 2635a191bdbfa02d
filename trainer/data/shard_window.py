"""A bounded window of shards on local scratch: fetched ahead in parallel, deleted once read.

The streaming reader (``trainer/data/packed.py``) asks for shard ``k`` of an epoch's order with
``path(k)`` (blocking until it is on local disk and verified) and hands the path to
``tf.data``; when the reader has read a shard to its end it calls ``release(k)``, which deletes
the local copy. Asking for shard ``k`` starts the downloads of shards ``k+1 .. k+ahead`` on
``parallel`` threads, so the next shards are usually there before they are needed. Downloads
are never held back by releases (no deadlock with a reader that keeps several shards open);
the local disk therefore holds at most the shards being read (the interleave's cycle) plus
``ahead`` shards: bounded by the window, never by the dataset's size.

Every shard is checked against the manifest before ``tf.data`` sees it: its size (a truncated
object) and its SHA-256 (a damaged or replaced one). A mismatch is a ``DataError`` naming the
shard, recorded in ``FAILURES`` too, because ``tf.data`` wraps exceptions raised in a generator
into its own error types (``trainer.data.packed.stream_errors`` turns them back into exit 3).

A shard of a local packed dataset is read in place (no copy), after the same checks, done once
per process per file.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from trainer.core.digest import file_sha256
from trainer.core.errors import DataError, TrainerError

log = logging.getLogger(__name__)

FAILURES: list[TrainerError] = []  # errors seen by fetcher threads (data, storage), newest last
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of in-place shards checked
_verified_lock = threading.Lock()


@dataclass(frozen=True)
class ShardRef:
    """One shard as the manifest describes it."""

    name: str  # relative to the dataset's root, e.g. "train/train-00003.tfrecord"
    bytes: int
    sha256: str
    images: int


def check_shard(path: Path, shard: ShardRef, where: str) -> None:
    """DataError (naming the shard) unless ``path`` has the manifest's size and checksum."""
    size = path.stat().st_size
    if size != shard.bytes:
        raise DataError(
            f"shard {where} is {'truncated' if size < shard.bytes else 'too long'}: {size} bytes, "
            f"the manifest says {shard.bytes}; the packed dataset is damaged: pack it again"
        )
    actual = file_sha256(path)
    if actual != shard.sha256:
        raise DataError(
            f"shard {where} fails its checksum (sha256 {actual[:12]}..., the manifest says "
            f"{shard.sha256[:12]}...); the packed dataset is damaged or was changed: pack it again"
        )


class ShardWindow:
    """The shards of one pass over a split, in the order they will be read (see module doc)."""

    def __init__(self, store, shards: list[ShardRef], scratch: Path, *, ahead: int, parallel: int,
                 keep: bool = False):
        self.store = store
        self.shards = shards
        self.ahead = max(1, ahead)
        self.keep = keep  # small splits (val, test) stay on scratch for the next pass
        self.dir = scratch
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="shard")
        self._futures: dict[int, Future] = {}
        self._copied: dict[int, Path] = {}
        self._released: set[int] = set()
        self._lock = threading.Lock()
        self.bytes_on_disk = 0
        self.peak_bytes_on_disk = 0

    def _schedule(self, upto: int) -> None:
        with self._lock:
            for k in range(min(upto, len(self.shards))):
                if k not in self._futures:
                    self._futures[k] = self._pool.submit(self._fetch, k)

    def _fetch(self, k: int) -> Path:
        shard = self.shards[k]
        where = self.store.uri_of(shard.name)
        try:
            in_place = self.store.local_path(shard.name)
            if in_place is not None:
                if not in_place.is_file():
                    raise DataError(f"shard {where} is missing; the packed dataset is incomplete")
                stat = in_place.stat()
                key = (str(in_place), stat.st_size, stat.st_mtime_ns)
                with _verified_lock:
                    known = key in _verified
                if not known:
                    check_shard(in_place, shard, where)
                    with _verified_lock:
                        _verified.add(key)
                return in_place
            dest = self.dir / shard.name.replace("/", "__")
            if self.keep and dest.is_file() and dest.stat().st_size == shard.bytes:
                return dest  # kept from an earlier pass, checked then
            tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
            try:
                self.store.get_file(shard.name, tmp)
                check_shard(tmp, shard, where)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            with self._lock:
                self._copied[k] = dest
                self.bytes_on_disk += shard.bytes
                self.peak_bytes_on_disk = max(self.peak_bytes_on_disk, self.bytes_on_disk)
            return dest
        except TrainerError as exc:  # a damaged shard (exit 3), or storage down (exit 1)
            FAILURES.append(exc)
            raise

    def path(self, k: int) -> str:
        """The local path of shard ``k`` once it is there and verified (blocks until then)."""
        self._schedule(k + 1 + self.ahead)
        return str(self._futures[k].result())

    def release(self, k: int) -> None:
        """Shard ``k`` has been read to its end: delete its local copy (unless kept)."""
        with self._lock:
            path = None if self.keep else self._copied.pop(k, None)
            if path is not None:
                self.bytes_on_disk -= self.shards[k].bytes
            self._released.add(k)
            done = len(self._released) == len(self.shards)
        if path is not None:
            path.unlink(missing_ok=True)
        if done:
            self.close()

    def close(self) -> None:
        """Stop fetching; delete every local copy this window made (unless kept)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self.keep:
            with self._lock:
                leftovers, self._copied = list(self._copied.values()), {}
                self.bytes_on_disk = 0
            for path in leftovers:
                path.unlink(missing_ok=True)


def clear_scratch(path: Path) -> None:
    """Remove a stream's scratch directory (at exit, or left by a killed process)."""
    shutil.rmtree(path, ignore_errors=True)
