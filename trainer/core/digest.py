"""SHA-256 of a local file, read in chunks: weights files, packed shards, served models."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 4 << 20


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path`` (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
