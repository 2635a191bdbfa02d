"""Where a run's wall time goes: start-up, data, train, evaluate, report, export.

A ``Stopwatch`` times the named laps of one run; ``metrics.json`` gets them as ``phase_seconds``
(plus ``total``, the process's age at the end; the key's name is kept for its readers), and
docs/benchmarks.md's phase table is read from real runs. ``startup`` counts from the process's
own start (the kernel's record of it, so the interpreter and the imports before ``run`` are
included), not from when this module loaded.
Laps that overlap (the report is drawn in another process while the model is exported) each
keep their own duration, so they may add up to more than ``total``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LAPS = ("startup", "data", "train", "evaluate", "report", "export")


def process_age_seconds() -> float:
    """Seconds since this process started (Linux /proc), or 0.0 where that is not known."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Stopwatch:
    """Accumulated wall seconds per lap name; ``startup`` starts with the time before ``run``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"startup": process_age_seconds()}
        self._mark = time.monotonic()
        self._started = self._mark - self.seconds["startup"]

    def lap(self, name: str) -> None:
        """Count the time since the previous lap (or since this clock began) as ``name``."""
        now = time.monotonic()
        self.add(name, now - self._mark)
        self._mark = now

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        """The laps in their natural order, rounded to milliseconds, plus ``total`` so far."""
        names = [n for n in LAPS if n in self.seconds] + sorted(set(self.seconds) - set(LAPS))
        out = {n: round(self.seconds[n], 3) for n in names}
        out["total"] = round(time.monotonic() - self._started, 3)
        return out
