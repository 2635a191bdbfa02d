"""Storage URIs: which scheme a URI has, and what a well-formed ``gs://`` URI is.

The only place that knows URI schemes. Pure (no cloud client): the trainer's config and the
launcher validate ``data``/``output``/``promote_to`` with ``validate_uri`` at the edge, and the
GCS modules parse with ``parse_uri``. An object name from a bucket becomes a local path only
through ``check_relative``, so nothing can be written outside the target directory.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath

from trainer.core.errors import ConfigError
from trainer.core.quoting import brief

GCS_SCHEME = "gs://"
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]\Z")
# What the config accepts at the edge (1-2 character names too: the emulator's test buckets).
_CONFIG_BUCKET_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,220}[a-z0-9])?")


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``gs://``) rather than a local path."""
    return uri.startswith(GCS_SCHEME)


def validate_uri(key: str, uri: str) -> None:
    """ConfigError naming the config ``key`` for a URI with control characters, or a ``gs://``
    URI without a valid bucket name: the config's check at the edge (the object path is checked
    by ``parse_uri`` when the bucket is used)."""
    if any(ord(ch) < 32 for ch in uri):
        raise ConfigError(f"config key {key!r}: {brief(uri)} contains a control character (newline?)")
    if not is_remote(uri):
        return
    bucket = uri[len(GCS_SCHEME):].split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"config key {key!r}: {brief(uri)} has no bucket name (gs://BUCKET/prefix)")
    parts_ok = all(0 < len(part) <= 63 for part in bucket.split("."))
    if not (_CONFIG_BUCKET_RE.fullmatch(bucket) and parts_ok and (len(bucket) <= 63 or "." in bucket)):
        raise ConfigError(
            f"config key {key!r}: {brief(bucket)} is not a valid bucket name (up to 63 lowercase "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")


def is_inside(inner: str, outer: str) -> bool:
    """True when the location ``inner`` is ``outer`` or below it (both local, or both gs://)."""
    if not inner or not outer or is_remote(inner) != is_remote(outer):
        return False
    if is_remote(inner):
        a, b = inner.rstrip("/") + "/", outer.rstrip("/") + "/"
    else:
        a = os.path.realpath(os.path.expanduser(inner)) + os.sep
        b = os.path.realpath(os.path.expanduser(outer)) + os.sep
    return a.startswith(b)


def parse_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` -> ``("bucket", "a/b")``; ConfigError for anything malformed."""
    if not is_remote(uri):
        raise ConfigError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len(GCS_SCHEME):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"{uri!r}: {bucket!r} is not a valid bucket name "
            "(3-222 characters: lowercase letters, digits, '-', '_', '.')"
        )
    prefix = prefix.rstrip("/")
    if prefix:
        try:
            check_relative(prefix)
        except ValueError as exc:
            raise ConfigError(f"{uri!r}: the path after the bucket {exc}") from None
    return bucket, prefix


def check_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside whatever directory it is joined to.

    Raises ValueError (saying why) for an empty name, a leading ``/``, empty, ``.`` or ``..``
    segments, backslashes or NUL characters: an object named ``a/../../etc/x`` or ``/etc/x``
    must never be written outside the cache.
    """
    if not name:
        raise ValueError("is empty")
    if name.startswith("/"):
        raise ValueError("is absolute (starts with '/')")
    if "\\" in name or "\0" in name:
        raise ValueError("contains a backslash or NUL character")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"has a {part!r} segment" if part else "has an empty segment ('//')")
    return PurePosixPath(name)


def join(prefix: str, rel: str) -> str:
    """An object name: ``rel`` under ``prefix`` (which may be empty, the bucket's root)."""
    return f"{prefix}/{rel}" if prefix else rel


def slug(bucket: str, prefix: str) -> str:
    """A directory name for one bucket prefix: readable, and unique per prefix."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{bucket}_{prefix}")[:80].strip("_")
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:10]
    return f"{readable}-{digest}"
