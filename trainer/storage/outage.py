"""Best-effort uploads through an object-storage outage, and the bound on waiting it out.

``progress.json``, the TensorBoard events and the attempt's log are pushed for visibility: a
failed push is a warning, never the run's end. But each failed push costs its retries (up to
``gcs.RETRY_SECONDS``), and a run whose storage stays away cannot save a checkpoint either: so
once a push failed, the next ones are skipped (a probe every ``PROBE_SECONDS``), and when
storage has failed for ``gcs.OUTAGE_SECONDS`` (5 minutes) ``check()`` (called at step
boundaries) ends the run with a ``StorageError`` (exit 1: the Job retries it; the last
checkpoint is kept). A run whose storage dies therefore exits within the bound stated in
docs/reliability.md, never trains on for ever with its pushes swallowed.

Only remote run directories can fail this way; with a local one nothing here ever triggers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from trainer.core.errors import StorageError

log = logging.getLogger(__name__)

PROBE_SECONDS = 30.0  # while storage is down, one best-effort push is tried this often


class Outage:
    """Tracks whether storage is failing since when (thread-safe: pushes run in threads)."""

    def __init__(self, limit_seconds: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self.limit_seconds = limit_seconds
        self.clock = clock
        self.down_since: float | None = None
        self.last_try = float("-inf")
        self.reason = ""
        self.skipped = 0
        self._lock = threading.Lock()

    def push(self, run_dir, rel: str, what: str) -> None:
        """``run_dir.push(rel)`` as a best effort: warned about, skipped while storage is down."""
        start = self.clock()
        with self._lock:
            if self.down_since is not None and start - self.last_try < PROBE_SECONDS:
                self.skipped += 1
                return
            self.last_try = start
        try:
            run_dir.push(rel)
        except StorageError as exc:
            with self._lock:
                first = self.down_since is None
                if first:
                    self.down_since, self.reason = start, str(exc)
            log.warning("cannot upload %s: %s%s", what, exc,
                        f"; skipping such uploads while storage is down (the run stops after "
                        f"{self.limit_seconds():.0f} s of failures)" if first else "")
            return
        except Exception as exc:  # noqa: BLE001 - visibility must never fail the training
            log.warning("cannot upload %s: %s", what, exc)
            return
        with self._lock:
            if self.down_since is not None:
                log.warning("storage answers again after %.0f s", self.clock() - self.down_since)
                self.down_since, self.reason = None, ""

    def check(self) -> None:
        """Raise StorageError when storage has been failing for longer than the limit."""
        with self._lock:
            down_since, reason = self.down_since, self.reason
        if down_since is None:
            return
        down = self.clock() - down_since
        if down >= self.limit_seconds():
            raise StorageError(f"object storage has failed for {down:.0f} s ({reason}); stopping so "
                               "the pod does not hold its devices: the last checkpoint is kept and "
                               "the Job retries the run")


def _limit() -> float:
    from trainer.storage import gcs  # only ever reached with a remote run directory

    return gcs.OUTAGE_SECONDS


OUTAGE = Outage(_limit)


def push(run_dir, rel: str, what: str) -> None:
    OUTAGE.push(run_dir, rel, what)


def check() -> None:
    OUTAGE.check()
