"""``python -m trainer data push SRC gs://bucket/prefix``: put a dataset into a bucket.

SRC is a built-in dataset (written as PNG files in one folder per class) or a local folder in
the class-folder layout. Files already in the bucket with the same content (size and MD5) are
skipped, so pushing again after an interruption sends only what is missing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
from pathlib import Path

from google.cloud import storage

from trainer.config import BUILTIN_PREFIX
from trainer.core.errors import ConfigError, DataError
from trainer.data.builtin import export_builtin
from trainer.storage import gcs, transfer
from trainer.storage.uri import is_remote, join, parse_uri

log = logging.getLogger(__name__)


def push_dataset(
    src: str, dst_uri: str, workers: int = gcs.DEFAULT_WORKERS, *, create_bucket: bool = False
) -> int:
    """``python -m trainer data push SRC DST``: upload a dataset; returns how many files it has.

    SRC is a built-in dataset (``builtin:digits``, written as PNG files in one folder per class)
    or a local directory in the class-folder layout. Files already in the bucket with the same
    content are skipped, so pushing again after an interruption sends only what is missing;
    hidden files and folders (``.DS_Store``, ``.git``) are not pushed. ``create_bucket`` creates
    a missing bucket first (meant for the emulator: a real bucket is usually created once, with
    its location and access policy, by an admin).
    """

    if not is_remote(dst_uri):
        raise ConfigError(f"data push: the destination must be gs://bucket/prefix, got {dst_uri!r}")
    parse_uri(dst_uri)  # a malformed destination fails before any work
    if workers < 1:
        raise ConfigError(f"data push: workers must be >= 1, got {workers}")
    if src.startswith(BUILTIN_PREFIX):

        with tempfile.TemporaryDirectory(prefix="kubetrain-push-") as tmp:
            count = export_builtin(src[len(BUILTIN_PREFIX):], Path(tmp))
            log.info("wrote %s as %d PNG files", src, count)
            return upload_tree(Path(tmp), dst_uri, workers, create_bucket=create_bucket)
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(f"data push: {src!r} is not a directory (expected one subfolder per class) "
                        f"nor a built-in dataset ({BUILTIN_PREFIX}digits)")
    return upload_tree(root, dst_uri, workers, create_bucket=create_bucket)


def upload_tree(
    root: Path, uri: str, workers: int = gcs.DEFAULT_WORKERS, *, create_bucket: bool = False
) -> int:
    """Upload every non-hidden file under ``root`` to ``uri``; returns how many files it holds.

    Objects already there with the same size and MD5 are not uploaded again; objects under ``uri``
    that are not in ``root`` are left alone (and counted in the log).
    """
    bucket_name, prefix = parse_uri(uri)
    files = transfer.files_under(root, skip_hidden=True)
    if not files:
        raise DataError(f"nothing to push: {str(root)!r} holds no files")
    client = gcs.client()
    bucket = client.bucket(bucket_name)
    if create_bucket:
        with gcs.errors(f"creating bucket gs://{bucket_name}"):
            if not bucket.exists(retry=gcs.RETRY):
                client.create_bucket(bucket_name, retry=gcs.RETRY)
                log.info("created bucket gs://%s", bucket_name)
    list_prefix = f"{prefix}/" if prefix else ""
    with gcs.errors(f"listing {uri}", gcs.missing_bucket(bucket_name, uri, ConfigError, "destination")):
        existing = {b.name[len(list_prefix):]: b
                    for b in client.list_blobs(bucket_name, prefix=list_prefix, retry=gcs.RETRY)}
    todo = [rel for rel in files if not _same_content(root / rel, existing.get(rel))]
    extra = len(set(existing) - set(files))
    log.info(
        "pushing %s to %s: %d files, %d already there, uploading %d with %d threads%s",
        root, uri, len(files), len(files) - len(todo), len(todo), workers,
        f"; {extra} other objects under the prefix left in place" if extra else "",
    )
    what = f"uploading to {uri}"
    with gcs.errors(what, gcs.missing_bucket(bucket_name, uri, ConfigError, "destination")):
        transfer.upload_files(bucket, root, todo, lambda rel: join(prefix, rel), workers, what)
    return len(files)


def _same_content(path: Path, blob: storage.Blob | None) -> bool:
    if blob is None or blob.size != path.stat().st_size or not blob.md5_hash:
        return False
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode() == blob.md5_hash
