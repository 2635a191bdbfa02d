"""Durations as people and kubectl write them: ``90s``, ``10m``, ``2h``, ``1h30m``, ``1d``.

A bare number is seconds (``--timeout 3600`` keeps working). Used by ``wait --timeout``,
``--pending-timeout`` and ``logs --since``.
"""

from __future__ import annotations

import argparse
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError naming the accepted forms."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 2h, 1h30m, 1d, "
                             "or seconds)") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds


def duration(text: str) -> float:
    """``parse_duration`` as an argparse ``type`` (a bad value is a usage error, exit 2)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
