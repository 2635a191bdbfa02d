"""Small files at a URI (local path or ``gs://bucket/prefix``), for tools that read or index
run directories without being the run: ``python -m jobs status`` reads a run's
``progress.json``, ``python -m jobs runs`` lists the runs under a parent and writes its
``index.html``.

Part of ``trainer.storage``, the one package that knows the schemes; the rest of the code calls
``read_text`` / ``write_bytes`` / ``child_dirs`` / ``join`` with whatever URI it was given.
Remote calls go through the same client and error translation as the trainer's (``gcs.py``,
imported on first remote use): a missing object is ``None``, a missing bucket or bad
credentials are one line (``ConfigError``/``StorageError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.storage.uri import is_remote, parse_uri


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/") or uri
    return "/".join([base, *parts])


def json_object(text: str | None) -> dict | None:
    """The JSON object in ``text``; None for no text, a torn write or anything but an object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_text(uri: str) -> str | None:
    """The text of the file at ``uri``; None when it does not exist."""
    if not is_remote(uri):
        try:
            return Path(uri).expanduser().read_text()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    from trainer.storage import gcs  # lazy: the cloud client

    bucket, name = parse_uri(uri)
    with gcs.errors(f"reading {uri}"):
        try:
            return gcs.client().bucket(bucket).blob(name).download_as_text(retry=gcs.RETRY)
        except gcs.NotFound:
            return None


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write (replace) the file at ``uri``."""
    if not is_remote(uri):
        path = Path(uri).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    from trainer.storage import gcs  # lazy: the cloud client

    bucket, name = parse_uri(uri)
    with gcs.errors(f"writing {uri}"):
        gcs.client().bucket(bucket).blob(name).upload_from_string(
            data, content_type=content_type, retry=gcs.RETRY)


def local_copy(uri: str, scratch: Path) -> Path | None:
    """The file at ``uri`` as a local path: itself when local, else downloaded (atomically,
    checksum verified) under ``scratch``; None when it does not exist."""
    if not is_remote(uri):
        path = Path(uri).expanduser()
        return path if path.is_file() else None
    import hashlib

    from trainer.storage import gcs, transfer  # lazy: the cloud client

    bucket, name = parse_uri(uri)
    dest = scratch / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(name).name
    with gcs.errors(f"reading {uri}"):
        try:
            transfer.download(gcs.client().bucket(bucket).blob(name), dest)
        except gcs.NotFound:
            return None
    return dest


def write_file(uri: str, path: Path) -> None:
    """Copy the local file ``path`` to ``uri`` (replacing it)."""
    if not is_remote(uri):
        write_bytes(uri, path.read_bytes())
        return
    from trainer.storage import gcs, transfer  # lazy: the cloud client

    bucket, name = parse_uri(uri)
    with gcs.errors(f"writing {uri}"):
        transfer.upload(gcs.client().bucket(bucket), path, name)


def child_dirs(uri: str) -> list[str]:
    """The names of the directories directly under ``uri`` (in a bucket: the prefixes one level
    down), sorted; [] when there are none."""
    if not is_remote(uri):
        root = Path(uri).expanduser()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    from trainer.storage import gcs  # lazy: the cloud client

    bucket, prefix = parse_uri(uri)
    with gcs.errors(f"listing {uri}"):
        blobs = gcs.client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else "", delimiter="/",
                                        retry=gcs.RETRY)
        for _ in blobs.pages:  # prefixes fill in as the pages are read
            pass
        start = len(prefix) + 1 if prefix else 0
        return sorted(p[start:].rstrip("/") for p in blobs.prefixes
                      if not p[start:].startswith("."))
