"""Storage: datasets and run directories, local or in a bucket.

The only package that knows about URI schemes (``uri.py``). The rest of the trainer sees:

* ``fetch_dataset(uri, cache_dir) -> Path``: a local directory holding the dataset (a local
  dataset is used in place; a bucket prefix is downloaded into the cache first);
* ``open_store(uri) -> Store``: a tree of files addressed by relative names (read, write,
  list, copy in and out) for the packed-dataset format (``store.py``), which streams from it
  instead of downloading everything first;
* ``open_run_dir(uri, scratch) -> RunDir``: the run's output (``rundir.py``);
* ``validate_uri(key, uri)``: the config's check of a ``data``/``output`` URI;
* ``storage_retries()``: transient failures retried so far (``metrics.json``), and
  ``outage.py``: best-effort uploads that skip while storage is down, and the bound after
  which a run whose storage stays away ends (exit 1).

The modules behind ``gs://``, imported only when a bucket is used (the cloud client costs a
second at start-up, and ``jobs/`` never needs it): ``gcs.py`` (client, retries, errors),
``transfer.py`` (parallel up/downloads), ``dataset_cache.py`` (a bucket prefix mirrored into a
local cache), ``gcs_store.py`` (a bucket prefix as a ``Store``), ``gcs_rundir.py`` (a run
directory in a bucket).
"""

from __future__ import annotations

from pathlib import Path

from trainer.core.errors import DataError
from trainer.storage.rundir import LocalRunDir, ReadOnlyRunDir, RunDir
from trainer.storage.store import Store
from trainer.storage.uri import GCS_SCHEME, is_remote, validate_uri

__all__ = ["GCS_SCHEME", "LocalRunDir", "ReadOnlyRunDir", "RunDir", "Store", "fetch_dataset", "is_remote",
           "open_run_dir", "open_store", "storage_retries", "validate_uri"]


def storage_retries() -> int:
    """Transient object-storage failures retried so far by this process (0 without a bucket)."""
    import sys

    gcs = sys.modules.get("trainer.storage.gcs")  # never imported: no bucket, no retries
    return gcs.retries() if gcs is not None else 0


def fetch_dataset(uri: str, cache_dir: Path) -> Path:
    """A local directory with the dataset at ``uri`` (downloaded into ``cache_dir`` if remote)."""
    if is_remote(uri):
        from trainer.storage.dataset_cache import download_prefix  # lazy: the cloud client

        return download_prefix(uri, cache_dir)
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"dataset directory {uri!r} does not exist")
    if not path.is_dir():
        raise DataError(f"dataset {uri!r} is not a directory (expected one subfolder per class)")
    return path


def open_store(uri: str, *, create_bucket: bool = False) -> Store:
    """The ``Store`` for ``uri``: a local directory or ``gs://bucket/prefix``."""
    if is_remote(uri):
        from trainer.storage.gcs_store import GCSStore  # lazy: the cloud client

        return GCSStore(uri, create_bucket=create_bucket)
    return Store(uri)


def open_run_dir(uri: str, scratch: Path, key: str = "output", recover: bool = True, *,
                 writer: bool = True) -> RunDir:
    """The run directory for ``uri``; remote outputs are staged under ``scratch``. Opening
    checks it is writable (a missing bucket, a read-only path: ConfigError naming ``key``) and,
    with ``recover``, finishes a publish an earlier process was killed in (``GCSRunDir``): not
    where another process may be publishing at the same time.

    ``writer=False`` (the other workers of a multi-worker run): a local output is read in
    place and never written (nor checked writable); a bucket output is staged in this
    process's own scratch space, so reading it writes nothing shared.
    """
    if is_remote(uri):
        from trainer.storage.gcs_rundir import GCSRunDir  # lazy: the cloud client

        # Only the writer finishes a killed publish: two workers doing it at once would delete
        # the staged copies under each other.
        return GCSRunDir(uri, scratch, key=key, recover=recover and writer)
    return LocalRunDir(uri, key=key) if writer else ReadOnlyRunDir(uri)
