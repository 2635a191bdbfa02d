"""Promotions to one target, one at a time and on record.

The runs of a nightly schedule may finish together and promote to the same ``promote_to``.
Each run takes the target's lock, ``<target>/promotion.lock``, before it compares its model
with the served one, and keeps it until its model and report are published. The lock is a file
created only if absent (a hard link of a complete file locally; in a bucket, a write
conditional on the object not existing, ``ifGenerationMatch=0``), so:

* one run promotes at a time, and the next compares against the model the first one promoted
  (two equally good models: the second is not promoted, by the gate's own rule);
* the served ``model/`` and ``report/`` are never a mix of two runs;
* a run waits at most ``promotion_wait_seconds`` for the lock, then is not promoted and says
  which run held it since when;
* a lock whose holder died (killed, its node lost) expires ``STALE_SECONDS`` after it was taken
  and is then broken, conditionally: only the stale lock that was read, never a newer one. A
  holder checks that the lock is still its own before it publishes.

Every decision (promoted, not promoted, waited out) is added to ``<target>/history/`` as one
JSON object per file, ``<UTC time>-<token>.json``, created only if absent and never rewritten:
who (run, job, host), when, the decision and its reason, the test statistic, and the
fingerprints of the new model, of the served model it was compared with and of the compared
test images. ``python -m jobs runs`` shows the history of the targets its runs promote to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trainer.core.contract import JOB_NAME_ENV  # the launcher sets it from the Job's name label
from trainer.core.digest import file_sha256
from trainer.core.quoting import brief
from trainer.storage import RunDir, open_run_dir, open_store

log = logging.getLogger(__name__)

LOCK = "promotion.lock"
HISTORY = "history"
HISTORY_FORMAT = 1
STALE_SECONDS = 3600.0  # a holder that has not let go after an hour is taken for dead
POLL_SECONDS = 2.0
MAX_ENTRY_BYTES = 1 << 20


def now_iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def sha256_of(path: Path) -> str | None:
    """``sha256:<hex>`` of a file (None: absent), to say which model was served or promoted."""
    try:
        return f"sha256:{file_sha256(path)}"
    except OSError:
        return None


def who(run: str) -> dict:
    """The run, its Job (in a cluster) and its host (the pod's name in a cluster)."""
    return {"run": run, "job": os.environ.get(JOB_NAME_ENV) or None, "host": socket.gethostname(),
            "pid": os.getpid()}


@dataclass
class Turn:
    """This run's turn at the target: held (the lock is ours) or not, and why not."""

    target: RunDir
    uri: str
    lock: bytes | None = None  # the lock file as we wrote it; None: not held
    waited_seconds: float = 0.0
    busy: str = ""  # why the lock was not had
    holder: dict = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return self.lock is not None

    def still_held(self) -> bool:
        """Whether the lock at the target is still the one this run wrote (not broken as stale)."""
        return self.lock is not None and self.target.read(LOCK) == self.lock


def _lock_info(data: bytes) -> dict | None:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("expires"), (int, float)):
        return None
    return info


def acquire(target: RunDir, uri: str, run: str, wait_seconds: float, *,
            clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
            stale_seconds: float = STALE_SECONDS) -> Turn:
    """Take the target's lock, waiting up to ``wait_seconds`` for another run to let it go."""
    start = clock()
    token = uuid.uuid4().hex
    holder = {**who(run), "token": token, "since": now_iso(start), "expires": start + stale_seconds}
    mine = json.dumps(holder, sort_keys=True).encode()
    announced = False
    while True:
        if target.create(LOCK, mine):
            return Turn(target, uri, lock=mine, waited_seconds=clock() - start, holder=holder)
        current = target.read(LOCK)
        if current is None:  # let go between our try and our look
            continue
        info = _lock_info(current)
        if info is not None and info.get("token") == token:  # our own write, retried
            return Turn(target, uri, lock=current, waited_seconds=clock() - start, holder=holder)
        if info is None or info["expires"] < clock():
            what = "unreadable" if info is None else f"taken by {brief(info.get('run'))} at {info.get('since')}"
            log.warning("breaking the stale promotion lock of %s (%s)", uri, what)
            target.delete_if(LOCK, current)
            continue
        waited = clock() - start
        if waited >= wait_seconds:
            busy = (f"another run has held the promotion lock of {uri} since {info.get('since')} "
                    f"(run {brief(info.get('run'))}, job {info.get('job') or '-'}); waited {waited:.0f} s "
                    "(promotion_wait_seconds)")
            return Turn(target, uri, waited_seconds=waited, busy=busy, holder=holder)
        if not announced:
            log.info("waiting up to %.0f s for the promotion lock of %s, held by %s since %s",
                     wait_seconds, uri, brief(info.get("run")), info.get("since"))
            announced = True
        sleep(min(POLL_SECONDS, max(0.0, wait_seconds - waited)))


def release(turn: Turn) -> None:
    if turn.lock is not None and not turn.target.delete_if(LOCK, turn.lock):
        log.warning("the promotion lock of %s was no longer this run's when it let go "
                    "(broken as stale by another run)", turn.uri)
    turn.lock = None


@contextlib.contextmanager
def turn(uri: str, scratch: Path, run: str, wait_seconds: float) -> Iterator[Turn]:
    """This run's turn at the promotion target ``uri``, released however the block ends.

    The target is opened without finishing another process's publish: that one may be running
    now. Whoever holds the lock opens it again and finishes what a killed holder left."""
    target = open_run_dir(uri, scratch, key="promote_to", recover=False)
    held = acquire(target, uri, run, wait_seconds)
    try:
        yield held
    finally:
        release(held)


def record(turn: Turn, entry: dict, clock: Callable[[], float] = time.time) -> str:
    """Add ``entry`` to the target's history (a new file, never rewritten); its name."""
    when = clock()
    stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    rel = f"{HISTORY}/{stamp}-{uuid.uuid4().hex[:8]}.json"
    body = {"format": HISTORY_FORMAT, "when": now_iso(when),
            **{k: turn.holder.get(k) for k in ("run", "job", "host")},
            "waited_for_lock_seconds": round(turn.waited_seconds, 3), **entry}
    turn.target.create(rel, (json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())
    log.info("promotion history: %s", turn.target.uri_of(rel))
    return rel


def note(uri: str, scratch: Path, run: str, entry: dict) -> str:
    """Add ``entry`` to the history of ``uri`` without its lock (a run that skipped, say)."""
    target = open_run_dir(uri, scratch, key="promote_to", recover=False)
    return record(Turn(target, uri, holder=who(run)), entry)


def history_entry(decision, new_model: str | None) -> dict:
    """What the history keeps of one decision (``promote.Decision``)."""
    comparison = decision.comparison or {}
    stat = decision.mcnemar or {}
    return {
        "decision": "promoted" if decision.promote else "not promoted",
        "reason": decision.reason,
        "new_accuracy": decision.new_accuracy,
        "served_accuracy": decision.current_accuracy,
        "statistic": {k: stat.get(k) for k in ("test", "p_value", "statistic", "only_new_right",
                                               "only_served_right", "alpha")} if stat else None,
        "fingerprints": {"new_model": new_model, "served_model": comparison.get("served_model"),
                         "compared_test_images": comparison.get("fingerprint")},
    }


def read_history(uri: str, last: int = 50) -> tuple[list[dict], list[str]]:
    """The last ``last`` history entries at the target ``uri``, oldest first, and the problems
    with entries that could not be used (too large, not JSON, not an object): never fatal."""
    store = open_store(uri)
    names = sorted(n for n in store.list(HISTORY) if n.endswith(".json"))[-last:]
    entries, problems = [], []
    for rel in names:  # relative to the target: history/<name>
        data = store.read_bytes(rel)
        if data is None:
            continue
        value = None
        if len(data) <= MAX_ENTRY_BYTES:
            try:
                value = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                value = None
        if isinstance(value, dict):
            entries.append(value)
        else:
            problems.append(f"{store.uri_of(rel)} is not a JSON object of at most 1 MiB; left out")
    return entries, problems
