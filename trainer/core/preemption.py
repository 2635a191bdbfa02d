"""SIGTERM in any stage of a run: stop promptly and leave a state the next pod resumes from.

Kubernetes sends SIGTERM on preemption or eviction and SIGKILL after the pod's grace period
(30 s on GKE Spot). What "stop" means depends on the stage
(``StagedStop.enter(stage)``; the head/fine-tune *phases* of training are ``schedule``'s, the
timed *laps* ``stopwatch``'s):

* training (``trainer/training/loop.py``): the loop checks the request between calls into the graph,
  saves a checkpoint at that step boundary and raises ``Preempted``;
* every other stage (download, data loading, evaluation, report, export, promotion) has nothing
  to save: the last checkpoint already holds all the training, ``report/`` and ``model/`` are
  built aside and published whole. The run stops at once with ``Preempted``: the signal
  handler raises it in the main thread when that thread is in the trainer's own code, and
  otherwise (inside a library, where an exception could break a lock) retries every 50 ms
  by SIGALRM; thread pools skip their queued work. The next pod redoes that stage.

Short critical sections (writing a checkpoint marker or ``config.yaml``, swapping a published
tree into place) run under ``critical()``: a SIGTERM arriving inside one is honoured when it
ends, so no file is left half-written. A second SIGTERM exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from trainer.core.contract import GRACE_ENV
from trainer.core.errors import EXIT_PREEMPTED, Preempted

log = logging.getLogger(__name__)

RESUME_HINT = "restart with the same --output to resume"


class StopRequest:
    """Set from a signal handler; the loop checks it between calls into the graph."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


class StagedStop(StopRequest):
    """A StopRequest that knows the run's stage and raises at once outside the training loop."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = "start-up"
        self.deferred = False  # True while the training loop polls the request itself
        self._critical = 0

    def enter(self, stage: str, *, deferred: bool = False) -> None:
        """Mark the start of ``stage``; raise now if a SIGTERM is already pending."""
        self.stage, self.deferred = stage, deferred
        log.debug("stage: %s", stage)
        if self and not deferred:
            self.raise_now()
        _inject_fault(stage)

    def raise_now(self) -> None:
        disarm()
        raise Preempted(f"{self.reason} during {self.stage}; nothing was lost: {RESUME_HINT}")

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self and not self._critical and not self.deferred:
            self.raise_now()

    def on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self:  # second signal: give up at once
            os._exit(EXIT_PREEMPTED)
        self.set(f"stopped by {name}")
        if self.deferred:
            log.warning("%s received: saving a checkpoint at the next step boundary", name)
        elif self._critical:
            log.warning("%s received during %s: stopping after the current write", name, self.stage)
        else:
            log.warning("%s received during %s: stopping now", name, self.stage)
        self.try_raise(frame)

    def try_raise(self, frame) -> None:
        """Raise Preempted in the main thread if it is at a safe point, else retry shortly.

        An exception raised inside library code can break its invariants (a lock released
        twice in ``threading``); so it is raised only when the interrupted frame is the
        trainer's own code, and otherwise re-tried by a SIGALRM a moment later. Thread pools
        stop taking work once a stop is requested (``requested()``), so waits end quickly.
        """
        if not self or self.deferred or self._critical:
            return
        if frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            self.raise_now()
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


_active: StagedStop | None = None
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the trainer's own code
RETRY_SECONDS = 0.05  # how soon a stop interrupted inside library code is retried

# Fault injection for tests: "STAGE" makes the process send itself a real SIGTERM as STAGE
# starts (deterministic: the handler runs before the stage's first step); "STAGE@SECONDS" sends
# it from a timer that many seconds into the stage. Every stage's handling is thereby tested
# through the real signal and the real CLI.
FAULT_ENV = "KUBETRAIN_TEST_SIGTERM_IN"


def _inject_fault(stage: str) -> None:
    import os
    import threading

    want, at, delay = os.environ.get(FAULT_ENV, "").partition("@")
    if want != stage:
        return
    if not at:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    timer = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()


def install(stop: StagedStop) -> None:
    """Route SIGTERM to ``stop`` (main thread only; called by the entry point)."""
    global _active
    _active = stop
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGALRM, lambda _signum, frame: stop.try_raise(frame))


def disarm() -> None:
    """Cancel a pending SIGALRM retry (before raising, and when the run ends)."""
    signal.setitimer(signal.ITIMER_REAL, 0)


def requested() -> bool:
    """True once a stop was requested: worker threads skip the rest of their queue."""
    return bool(_active)


def check() -> None:
    """Raise Preempted now if a stop was requested outside training (a safe point)."""
    stop = _active
    if stop is not None and stop and not stop.deferred and not stop._critical:
        stop.raise_now()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A short section a SIGTERM must not cut in half (a no-op when no handler is installed)."""
    if _active is None:
        yield
        return
    with _active.critical():
        yield


# -- how long a checkpoint takes vs the grace period -------------------------------------------

SPOT_GRACE_SECONDS = 30.0  # GKE Spot VMs: the preemption notice is 30 s


def grace_seconds() -> float | None:
    """The pod's termination grace period, when the launcher passed it in the environment."""
    import os

    try:
        value = float(os.environ.get(GRACE_ENV, ""))
    except ValueError:
        return None
    return value if value > 0 else None


class SaveTimer:
    """Watches checkpoint save times; warns once when a save would not fit the grace period."""

    def __init__(self, seconds: list[float]):
        self.seconds = seconds  # the Checkpointer's list, appended to at each save
        self.grace = grace_seconds()
        self._warned = False

    def check(self) -> None:
        if not self.seconds or self._warned:
            return
        last, grace = self.seconds[-1], self.grace or SPOT_GRACE_SECONDS
        if last > grace:
            self._warned = True
            log.warning("saving a checkpoint took %.1fs, longer than the pod's %.0fs termination grace "
                        "period%s: a preempted pod would be killed before its checkpoint is complete; "
                        "raise terminationGracePeriodSeconds or save less often",
                        last, grace, "" if self.grace else " (assumed: GKE Spot)")

    def summary(self) -> dict:
        s = self.seconds
        return {"count": len(s), "last": s[-1] if s else None, "max": max(s) if s else None,
                "mean": sum(s) / len(s) if s else None, "grace_period_seconds": self.grace}
