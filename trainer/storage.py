"""Storage URIs: local paths and ``gs://bucket/prefix``.

This is the only module that knows about schemes. The rest of the trainer sees two things:

* ``fetch_dataset(uri, cache_dir) -> Path``: a local directory holding the dataset (a local
  dataset is used in place; a bucket prefix is downloaded into the cache first);
* ``open_store(uri) -> Store``: a tree of files addressed by relative names (read, write,
  list, copy in and out) for the packed-dataset format (``trainer/packed.py``), which streams
  from it instead of downloading everything first;
* ``RunDir``: the run's output. The trainer always writes into ``run_dir.local`` and then calls
  ``push(rel)`` (make a file or tree durable at the destination), ``pull(rel)`` (bring it back
  before resuming) and ``publish(staging, rel)`` (replace ``rel`` with a complete tree, so a
  failed run never overwrites a good one). For a local output ``local`` *is* the destination
  and ``push``/``pull`` do nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from trainer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"


def is_remote(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def fetch_dataset(uri: str, cache_dir: Path) -> Path:
    """A local directory with the dataset at ``uri`` (downloaded into ``cache_dir`` if remote)."""
    if is_remote(uri):
        from trainer import gcs  # the cloud client is imported only when a bucket is used

        return gcs.download_prefix(uri, cache_dir)
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"dataset directory {uri!r} does not exist")
    if not path.is_dir():
        raise DataError(f"dataset {uri!r} is not a directory (expected one subfolder per class)")
    return path


class Store:
    """Files under a root, addressed by relative POSIX names: a local directory (this class) or
    a bucket prefix (``trainer.gcs_store.GCSStore``, same methods)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(uri).expanduser()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"

    def local_path(self, rel: str) -> Path | None:
        """Where ``rel`` can be read in place, or None when it must be copied in (``get_file``)."""
        return self.root / rel

    def read_bytes(self, rel: str) -> bytes | None:
        """The content of ``rel``; None if it does not exist."""
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole (readers never see a partial file)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put_file(self, src: Path, rel: str) -> None:
        """Copy the local file ``src`` to ``rel`` (whole: a temporary name, then a rename)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)

    def get_file(self, rel: str, dest: Path) -> None:
        """Copy ``rel`` to the local file ``dest``; DataError if it does not exist."""
        try:
            shutil.copyfile(self.root / rel, dest)
        except FileNotFoundError:
            raise DataError(f"{self.uri_of(rel)} does not exist") from None

    def list(self, rel: str = "") -> dict[str, int]:
        """Relative name -> size of every file under the folder ``rel`` ("" = everything)."""
        base = self.root / rel if rel else self.root
        out = {}
        for dirpath, _dirs, names in os.walk(base):
            for n in names:
                p = Path(dirpath) / n
                if p.is_file():
                    out[p.relative_to(self.root).as_posix()] = p.stat().st_size
        return out

    def delete(self, rel: str) -> None:
        """Delete the file ``rel`` (absent is fine)."""
        (self.root / rel).unlink(missing_ok=True)


def open_store(uri: str, *, create_bucket: bool = False) -> Store:
    """The ``Store`` for ``uri``: a local directory or ``gs://bucket/prefix``."""
    if is_remote(uri):
        from trainer.gcs_store import GCSStore

        return GCSStore(uri, create_bucket=create_bucket)
    return Store(uri)


class RunDir:
    """A run's output directory on the local disk (see the module docstring)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.local = Path(uri).expanduser()
        try:
            self.local.mkdir(parents=True, exist_ok=True)
            probe = self.local / f".write-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"output directory {uri!r} is not writable: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def push(self, rel: str) -> None:
        """Make ``local/rel`` (a file or a tree) durable at the destination."""

    def pull(self, rel: str) -> bool:
        """Bring ``rel`` (a file or a tree) from the destination into ``local``; False if absent."""
        return (self.local / rel).exists()

    def remove(self, rel: str) -> None:
        """Delete the file or tree ``rel`` locally and at the destination (absent is fine)."""
        path = self.local / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def staging(self, rel: str) -> Path:
        """A fresh empty directory to build ``rel`` in before ``publish`` (same filesystem)."""
        path = self.local / f".{rel.replace('/', '_')}.staging-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, rel: str) -> None:
        """Replace ``rel`` with the complete tree ``staging`` (moved, not copied).

        The previous ``rel`` is kept until the new one is in place, so an interrupted or failed
        run leaves the last good one readable.
        """
        target = self.local / rel
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        from trainer.preemption import critical

        with critical():  # a SIGTERM between the two renames would leave no ``rel`` at all
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"


def open_run_dir(uri: str, scratch: Path) -> RunDir:
    """The run directory for ``uri``; remote outputs are staged under ``scratch``."""
    if is_remote(uri):
        from trainer import gcs

        return gcs.GCSRunDir(uri, scratch)
    return RunDir(uri)
