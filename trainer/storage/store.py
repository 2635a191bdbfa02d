"""A tree of files addressed by relative names, for the packed-dataset format.

``Store`` (a local directory) and ``gcs_store.GCSStore`` (a bucket prefix, same methods) read,
write, list and copy files in and out; ``trainer/data/packed.py`` streams a packed dataset from one
instead of downloading everything first, and ``trainer/data/packer.py`` writes one. ``open_store``
(in ``trainer.storage``) picks the implementation from the URI. Nothing here imports a cloud
client.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from trainer.core.errors import DataError


class Store:
    """Files under a root, addressed by relative POSIX names: a local directory (this class) or
    a bucket prefix (``gcs_store.GCSStore``, same methods)."""

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
