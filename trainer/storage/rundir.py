"""The run directory interface, and its local-disk implementation.

The trainer always writes into ``run_dir.local`` and then calls ``push(rel)`` (make a file or
tree durable at the destination), ``pull(rel)`` (bring it back before resuming) and
``publish(staging, rel)`` (replace ``rel`` with a complete tree, so a failed run never
overwrites a good one). ``RunDir`` holds the local half every run directory shares (staging,
swapping a tree in, removing); ``LocalRunDir`` is a local output, where ``local`` *is* the
destination and ``push``/``pull`` do nothing; ``gcs_rundir.GCSRunDir`` mirrors ``local`` to a
bucket. Nothing here imports a cloud client.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from trainer.core.errors import ConfigError
from trainer.core.preemption import critical


class RunDir:
    """A run's output directory: ``uri`` (where it lives) and ``local`` (where it is written)."""

    uri: str
    local: Path

    def __init__(self, uri: str, local: Path):
        if type(self) is RunDir:
            raise TypeError("RunDir is the interface: use open_run_dir(uri, scratch), or "
                            "LocalRunDir(path) for a local directory")
        self.uri = uri
        self.local = local

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

        with critical():  # a SIGTERM between the two renames would leave no ``rel`` at all
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"

    # Conditional writes: the primitives behind the promotion lock and the append-only
    # promotion history (``trainer.promotions``), where several runs write one target at once.

    def create(self, rel: str, data: bytes) -> bool:
        """Write the file ``rel`` only if it does not exist yet (False: it exists). Atomic: the
        file appears whole or not at all (a hard link of a complete temporary file)."""
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.new-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links (some FUSE mounts): exclusive create
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def read(self, rel: str) -> bytes | None:
        """The file ``rel`` as it is at the destination now (None: absent)."""
        try:
            return (self.local / rel).read_bytes() if self.pull(rel) else None
        except (FileNotFoundError, IsADirectoryError):
            return None

    def delete_if(self, rel: str, data: bytes) -> bool:
        """Delete the file ``rel`` only if it still holds ``data`` (False: changed or gone).
        Locally the read and the unlink are two steps: only breaking a stale lock relies on it,
        and two processes breaking the same stale lock within microseconds is what it risks."""
        path = self.local / rel
        try:
            if path.read_bytes() != data:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True


class LocalRunDir(RunDir):
    """A run directory on a local (or mounted) filesystem; checked writable when opened."""

    def __init__(self, uri: str, key: str = "output"):
        super().__init__(uri, Path(uri).expanduser())
        try:
            self.local.mkdir(parents=True, exist_ok=True)
            probe = self.local / f".write-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{key} directory {uri!r} is not writable: {exc.strerror}") from None


class ReadOnlyRunDir(RunDir):
    """A local run directory as a reader that must not write it sees it (the other workers of a
    multi-worker run): no mkdir, no write probe, and a write is a bug."""

    def __init__(self, uri: str):
        super().__init__(uri, Path(uri).expanduser())

    def push(self, rel: str) -> None:
        raise AssertionError(f"worker wrote {rel}: only worker 0 writes the run directory")

    remove = publish = push  # type: ignore[assignment]
