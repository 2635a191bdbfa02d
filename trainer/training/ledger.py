"""The goodput ledger: where every wall second of a run went, over all its attempts.

A run is one or more attempts (processes) on the same ``--output``: a pod preempted (SIGTERM,
checkpoint, exit 143) or killed (SIGKILL, OOM, node lost) is started again and resumes. The
ledger splits the run's wall time, from its submission to the end, into parts:

* ``queued``: submission to the first attempt's process start (the queue, scheduling, image
  pull), and between attempts the gap from the previous attempt's last record to the next
  process's start (the old pod's end, the re-queue, scheduling, image pull);
* ``starting``: each process's start (the kernel's record of it) to its first training step:
  imports, data, model build, rendezvous, restore;
* ``training``: the training loop (per-epoch validation included), productive;
* ``redone``: training lost when an attempt ended: what it trained since its last checkpoint,
  as of its last record. The loop checkpoints at the step boundary where a SIGTERM arrives and a
  resume continues mid-epoch on the same batches, so a SIGTERM loses ~0 s; a SIGKILL loses the
  training since the last checkpoint (as of the last heartbeat: the time after that heartbeat is
  counted in the next gap, ``queued``);
* ``evaluating``: the test split; ``reporting``: promotion check, report, export, promotion.

``total`` is the wall clock from the ledger's origin to now and ``goodput`` = ``training`` /
``total``. The parts are contiguous laps of one clock (``time.time``, comparable between pods),
so they add up to ``total`` (to rounding; only clocks that disagree between nodes, or two pods
of one run alive at once, break that, and then gaps count as 0). The origin is the submission
(``KUBETRAIN_SUBMITTED_AT``, epoch seconds or RFC 3339, set by ``jobs submit`` on the Job: every
pod of the Job gets the same value) with ``since: "submission"``; without it (a CronJob's run,
a plain process) the first attempt's process start, ``since: "first start"``, and the wait
before it is not in the ledger (``jobs status`` shows it from the API objects).

The state is ``checkpoints/ledger.json`` in the run directory, written (chief only, atomically,
pushed like the progress record) when an attempt attaches, at each checkpoint save, every
``HEARTBEAT_SECONDS`` of training, at each part's start and when the attempt ends; the next
attempt reads it. A ledger that cannot be read is warned about and started afresh; a finished
run's ledger, or one older than the submission, starts afresh too (a new run on the same
directory). Nothing here may fail a run. ``metrics.json`` gets ``summary()`` as ``ledger``; its
``total`` ends when metrics.json is written (publishing report/ and model/ follows, and is in
the final ledger.json).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping

from trainer.core.contract import SUBMITTED_ENV
from trainer.core.errors import Preempted
from trainer.runtime.stopwatch import process_age_seconds
from trainer.storage import RunDir, outage
from trainer.storage.small_files import json_object
from trainer.training.progress import EVERY_SECONDS

log = logging.getLogger(__name__)

FILE = "checkpoints/ledger.json"
FORMAT = 1
PARTS = ("queued", "starting", "training", "redone", "evaluating", "reporting")
MAX_BYTES = 1 << 20  # a ledger is a kilobyte; a larger file is not one
HEARTBEAT_SECONDS = EVERY_SECONDS  # within training, as often as the progress record


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from ``value``: epoch seconds or RFC 3339 (``2026-12-04T20:00:00Z``); None
    when empty or not a time (warned)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            log.warning("%s=%.40r is neither epoch seconds nor RFC 3339; the ledger starts at the "
                        "process start", SUBMITTED_ENV, text)
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp()
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def describe(summary: Mapping) -> str:
    """One line for the log: 'queued 0.0 s, starting 3.1 s, ... of 41.2 s over 2 attempts: goodput 0.52'."""
    parts = ", ".join(f"{p} {summary[p]:.1f} s" for p in PARTS)
    goodput = "-" if summary["goodput"] is None else f"{summary['goodput']:.2f}"
    return (f"{parts} of {summary['total']:.1f} s since the {summary['since']}, "
            f"{summary['attempts']} attempt(s): goodput {goodput}")


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _seconds(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok and value >= 0 else None


def parse_state(text: str | None) -> dict | None:
    """A ledger state from its JSON text (read as untrusted); None for none, a torn write or
    anything that is not a ledger of this ``FORMAT``."""
    state = json_object(text)
    if state is None or state.get("format") != FORMAT:
        return None
    parts = state.get("parts")
    if not isinstance(parts, dict) or any(_seconds(parts.get(p)) is None for p in PARTS):
        return None
    origin, last = _seconds(state.get("origin")), _seconds(state.get("last_record"))
    unsaved, attempts = _seconds(state.get("unsaved_training")), state.get("attempts")
    if None in (origin, last, unsaved) or last < origin:
        return None
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        return None
    if state.get("since") not in ("submission", "first start"):
        return None
    submitted, first = state.get("submitted_at"), _seconds(state.get("first_started"))
    if (submitted is not None and _seconds(submitted) is None) or first is None or first < origin:
        return None
    return {"parts": {p: float(parts[p]) for p in PARTS}, "origin": origin, "last_record": last,
            "unsaved_training": unsaved, "attempts": attempts, "since": state["since"],
            "submitted_at": submitted, "first_started": first, "status": str(state.get("status", ""))[:40]}


class Ledger:
    """The run's ledger in this process: laps from the process start; ``attach`` joins it to the
    run directory's earlier attempts (chief only: other workers keep it to themselves)."""

    def __init__(self, *, submitted_at: float | None = None, process_age: float | None = None,
                 clock: Callable[[], float] = time.time):
        self.clock = clock
        before = clock()
        age = process_age_seconds() if process_age is None else process_age
        # the clock read on both sides of the age: a process descheduled in between errs by half
        self.process_started = (before + clock()) / 2 - age
        self.submitted_at = submitted_at
        self.origin = self.process_started if submitted_at is None else min(submitted_at, self.process_started)
        self.first_started = self.process_started  # the first attempt's (this one's, until attach)
        self.parts = dict.fromkeys(PARTS, 0.0)
        self.parts["queued"] = self.process_started - self.origin
        self.attempts = 1
        self.part = "starting"
        self._mark = self.process_started
        self.unsaved = 0.0  # training seconds of this attempt since its last checkpoint
        self.run_dir: RunDir | None = None
        self._last_write = float("-inf")

    @classmethod
    def start(cls, environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.time) -> Ledger:
        return cls(submitted_at=parse_time(environ.get(SUBMITTED_ENV)), clock=clock)

    @property
    def since(self) -> str:
        return "first start" if self.submitted_at is None else "submission"

    # -- joining earlier attempts -------------------------------------------------------------

    def attach(self, run_dir: RunDir | None, enabled: bool = True) -> None:
        """Continue the ledger of ``run_dir``'s earlier attempts and record this one there."""
        if not enabled or run_dir is None:
            return
        self.run_dir = run_dir
        self.resume_from(self._read())
        self.write("running")

    def _read(self) -> dict | None:
        try:
            if not self.run_dir.pull(FILE):
                return None
            path = self.run_dir.local / FILE
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - a ledger is an account: never fail a run on it
            log.warning("cannot read %s: %s; the ledger starts afresh", self.run_dir.uri_of(FILE), exc)
            return None
        state = parse_state(text)
        if state is None:
            log.warning("%s is not a ledger this trainer writes; the ledger starts afresh",
                        self.run_dir.uri_of(FILE))
        return state

    def resume_from(self, prior: dict | None) -> None:
        """Take an earlier attempt's state (``parse_state``): its parts, its training since its
        last checkpoint as redone, and the gap since its last record as queued."""
        if prior is None:
            return
        if prior["status"] == "finished":
            log.info("the run directory's ledger is of a finished run: this run's ledger starts afresh")
            return
        if self.submitted_at is not None and self.submitted_at > prior["last_record"]:
            log.info("submitted after the run directory's last attempt ended: a new ledger")
            return
        self._lap()
        current = self.parts
        self.parts = dict(prior["parts"])
        lost = min(prior["unsaved_training"], self.parts["training"])
        self.parts["training"] -= lost
        self.parts["redone"] += lost
        gap = self.process_started - prior["last_record"]
        self.parts["queued"] += max(0.0, gap)
        for part in PARTS:
            if part != "queued":
                self.parts[part] += current[part]
        if gap < 0:  # the previous attempt's last record is after this process started
            log.info("the previous attempt wrote its ledger %.1f s after this process started "
                     "(two pods at once, or clocks apart): overlap counted once", -gap)
            self.parts["starting"] = max(0.0, self.parts["starting"] + gap)
        self.origin, self.submitted_at = prior["origin"], prior["submitted_at"]
        self.first_started = prior["first_started"]
        if prior["since"] == "first start":
            self.submitted_at = None
        self.attempts = prior["attempts"] + 1

    # -- laps ---------------------------------------------------------------------------------

    def _lap(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._mark)
        self._mark = max(self._mark, now)
        self.parts[self.part] += elapsed
        if self.part == "training":
            self.unsaved += elapsed

    def enter(self, part: str) -> None:
        """The time since the last lap goes to the current part; ``part`` starts now."""
        if part not in PARTS:
            raise ValueError(f"unknown ledger part {part!r}; one of {', '.join(PARTS)}")
        self._lap()
        self.part = part
        self.write("running")

    def saved(self) -> None:
        """A checkpoint is durable: the training so far is kept whatever happens next."""
        self._lap()
        self.unsaved = 0.0
        self.write("running")

    def heartbeat(self) -> None:
        """Within training: record the state every ``HEARTBEAT_SECONDS`` (for a SIGKILL)."""
        if self.run_dir is not None and self.clock() - self._last_write >= HEARTBEAT_SECONDS:
            self.write("running")

    def ended(self, exc: BaseException | None = None) -> None:
        """The attempt's last record: finished, preempted or failed."""
        self.write("finished" if exc is None else "preempted" if isinstance(exc, Preempted) else "failed")

    # -- what is recorded ---------------------------------------------------------------------

    def summary(self) -> dict:
        """For ``metrics.json``: seconds per part, total, goodput, attempts, origin."""
        self._lap()
        total = max(0.0, self._mark - self.origin)
        out = {p: round(self.parts[p], 3) for p in PARTS}
        out.update(total=round(total, 3),
                   goodput=round(self.parts["training"] / total, 4) if total > 0 else None,
                   attempts=self.attempts, since=self.since, submitted_at=_utc(self.submitted_at),
                   first_started_at=_utc(self.first_started))
        return out

    def state(self, status: str) -> dict:
        """What ``checkpoints/ledger.json`` holds: enough for the next attempt to continue."""
        summary = self.summary()
        return {"format": FORMAT, "status": status, "since": self.since, "origin": self.origin,
                "submitted_at": self.submitted_at, "first_started": self.first_started,
                "attempts": self.attempts,
                "last_record": self._mark, "unsaved_training": self.unsaved,
                "parts": dict(self.parts), "summary": summary}

    def write(self, status: str) -> None:
        """Write ``checkpoints/ledger.json`` atomically and push it; failures are warnings."""
        if self.run_dir is None:
            return
        self._last_write = self.clock()
        path = self.run_dir.local / FILE
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.state(status), indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - an account must never fail the training
            log.warning("cannot write %s: %s", FILE, exc)
            return
        outage.push(self.run_dir, FILE, "the goodput ledger")
