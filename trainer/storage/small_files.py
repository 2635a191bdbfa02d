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

from trainer.core.errors import ConfigError
from trainer.storage.uri import is_remote, parse_uri


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/") or uri
    return "/".join([base, *parts])


MAX_SMALL_FILE_BYTES = 16 << 20  # progress.json, metrics.json: kilobytes; more is not ours


class Unreadable(ValueError):
    """A small file exists but cannot be used: not UTF-8, too large, not readable. The message
    says why, without the URI (the caller names the file)."""


def json_object(text: str | None) -> dict | None:
    """The JSON object in ``text``; None for no text, a torn write or anything but an object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_text(uri: str, max_bytes: int = MAX_SMALL_FILE_BYTES) -> str | None:
    """The text of the file at ``uri``; None when it does not exist; ``Unreadable`` when it is
    over ``max_bytes``, not UTF-8, or not readable (a permission, a directory in its place)."""
    if not is_remote(uri):
        path = Path(uri).expanduser()
        try:
            with path.open("rb") as f:
                data = f.read(max_bytes + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    else:
        from trainer.storage import gcs  # lazy: the cloud client

        bucket, name = parse_uri(uri)
        with gcs.errors(f"reading {uri}"):
            try:
                blob = gcs.client().bucket(bucket).get_blob(name, retry=gcs.RETRY)
                if blob is None:
                    return None
                if (blob.size or 0) > max_bytes:
                    raise Unreadable(f"is larger than {max_bytes >> 20} MiB")
                data = blob.download_as_bytes(retry=gcs.RETRY)
            except gcs.NotFound:
                return None
    if len(data) > max_bytes:
        raise Unreadable(f"is larger than {max_bytes >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"is not UTF-8 text (bad byte at offset {exc.start})") from None


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


def child_dirs(uri: str, not_found_flag: str = "") -> list[str]:
    """The names of the directories directly under ``uri`` (in a bucket: the prefixes one level
    down), sorted; [] when there are none. A missing bucket is a ConfigError naming
    ``not_found_flag`` (the option or command that named it) when one is given."""
    if not is_remote(uri):
        root = Path(uri).expanduser()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    from trainer.storage import gcs  # lazy: the cloud client

    bucket, prefix = parse_uri(uri)
    missing = gcs.missing_bucket(bucket, uri, ConfigError, not_found_flag) if not_found_flag else None
    with gcs.errors(f"listing {uri}", missing):
        blobs = gcs.client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else "", delimiter="/",
                                        retry=gcs.RETRY)
        for _ in blobs.pages:  # prefixes fill in as the pages are read
            pass
        start = len(prefix) + 1 if prefix else 0
        return sorted(p[start:].rstrip("/") for p in blobs.prefixes
                      if not p[start:].startswith("."))


def exists_under(uri: str) -> bool:
    """Whether anything is stored at or under ``uri`` (a local path that exists; in a bucket,
    one object under the prefix)."""
    if not is_remote(uri):
        return Path(uri).expanduser().exists()
    from trainer.storage import gcs  # lazy: the cloud client

    bucket, prefix = parse_uri(uri)
    with gcs.errors(f"listing {uri}", gcs.missing_bucket(bucket, uri, ConfigError, "the URI")):
        return any(True for _ in gcs.client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else "",
                                                         max_results=1, retry=gcs.RETRY))
