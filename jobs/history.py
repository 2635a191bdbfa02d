"""The promotion history under ``python -m jobs runs``: what each night decided about the served
model. The trainer adds one file per decision to ``<promote_to>/history/``
(``trainer.promotions``); this reads the last ones of every target the listed runs promote to,
and of the listed directory itself when it is a promotion target."""

from __future__ import annotations

from trainer.core.quoting import brief
from trainer.promotions import read_history
from trainer.storage import small_files

LAST = 20  # entries shown per target


def targets(parent: str, promoted_to: list[str | None]) -> list[str]:
    """The promotion targets to show: the runs' ``promote_to`` (first seen first), and
    ``parent`` itself when it holds a history."""
    out = list(dict.fromkeys(t for t in promoted_to if t))
    if parent not in out and "history" in small_files.child_dirs(parent):
        out.append(parent)
    return out


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _text(entry: dict, key: str) -> str:
    return entry[key] if isinstance(entry.get(key), str) else "-"


def rows(entries: list[dict]) -> list[list[str]]:
    """One row per decision, oldest first; a field of the wrong type shows as -."""
    out = [["WHEN", "RUN", "DECISION", "P", "NEW ACC", "SERVED ACC", "WAITED", "REASON"]]
    for e in entries:
        stat = e.get("statistic") if isinstance(e.get("statistic"), dict) else {}
        run = _text(e, "run")
        waited = _number(e.get("waited_for_lock_seconds"), ".0f")
        out.append([_text(e, "when").replace("T", " ")[:19], run.rstrip("/").rsplit("/", 1)[-1] or run,
                    _text(e, "decision"), _number(stat.get("p_value"), ".3g"),
                    _number(e.get("new_accuracy"), ".4f"), _number(e.get("served_accuracy"), ".4f"),
                    waited if waited == "-" else f"{waited}s", brief(_text(e, "reason"), 70).strip("'")])
    return out


def collect(targets_: list[str]) -> list[tuple[str, list[dict], list[str]]]:
    """(target, its last entries, problems) for each target with a history."""
    out = []
    for target in targets_:
        entries, problems = read_history(target, LAST)
        if entries or problems:
            out.append((target, entries, problems))
    return out
