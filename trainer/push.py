"""``python -m trainer data push SRC gs://bucket/prefix``: put a dataset into a bucket.

SRC is a built-in dataset (``builtin:digits``, written as PNG files in one folder per class) or a
local directory in the same layout. Files go up in parallel; files already in the bucket with the
same content are skipped, so pushing again after an interruption only sends what is missing.
Hidden files and folders (``.DS_Store``, ``.git``) are not pushed.

    python -m trainer data push builtin:digits gs://my-bucket/digits
    python -m trainer --data gs://my-bucket/digits --output gs://my-bucket/runs/digits-1
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from trainer.config import BUILTIN_PREFIX
from trainer.errors import ConfigError, DataError
from trainer.storage import is_remote

log = logging.getLogger(__name__)


def push_dataset(
    src: str, dst_uri: str, workers: int | None = None, *, create_bucket: bool = False
) -> int:
    """Upload the dataset ``src`` to ``dst_uri``; returns how many files the dataset has there.

    ``workers``: parallel uploads (default ``gcs.DEFAULT_WORKERS``). ``create_bucket`` creates a missing bucket first (meant for the emulator; on Google Cloud
    a bucket is usually created once, with its location and access policy, by an admin).
    """
    from trainer import gcs  # the cloud client is imported only when a bucket is used

    if not is_remote(dst_uri):
        raise ConfigError(f"data push: the destination must be gs://bucket/prefix, got {dst_uri!r}")
    gcs.parse_uri(dst_uri)  # a malformed destination fails before any work
    workers = gcs.DEFAULT_WORKERS if workers is None else workers
    if workers < 1:
        raise ConfigError(f"data push: workers must be >= 1, got {workers}")
    if src.startswith(BUILTIN_PREFIX):
        from trainer.data import export_builtin

        with tempfile.TemporaryDirectory(prefix="kubetrain-push-") as tmp:
            count = export_builtin(src[len(BUILTIN_PREFIX):], Path(tmp))
            log.info("wrote %s as %d PNG files", src, count)
            return gcs.upload_tree(Path(tmp), dst_uri, workers, create_bucket=create_bucket)
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(f"data push: {src!r} is not a directory (expected one subfolder per class) "
                        f"nor a built-in dataset ({BUILTIN_PREFIX}digits)")
    return gcs.upload_tree(root, dst_uri, workers, create_bucket=create_bucket)
