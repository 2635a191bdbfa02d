"""What the training loop reports to, besides its log: the progress record
(``trainer.progress``) and TensorBoard events (``trainer.events``), both in the run directory.

The loop calls two hooks, ``chunk`` after each call into the graph and ``epoch`` after each
epoch's checkpoint; ``run`` calls ``stopped`` when training ends early and ``finished`` with
the metrics and the report. Only the chief writes (``enabled``): on other workers every hook
is a no-op. Nothing here may fail a run: a write that fails is logged and skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import Preempted
from trainer.events import DIR as EVENTS_DIR
from trainer.progress import ProgressRecord
from trainer.storage import RunDir

log = logging.getLogger(__name__)


class NullObserver:
    """The hooks, doing nothing (a Trainer used on its own, in tests and benchmarks)."""

    def chunk(self, epoch: int, step: int, steps: int, totals: Any) -> None:
        pass

    def epoch(self, epochs_completed: int, row: dict) -> None:
        pass


class RunObserver(NullObserver):
    def __init__(self, run_dir: RunDir, *, epochs: int, steps_per_epoch: int, global_batch: int,
                 learning_rate: Callable[[], float], enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.run_dir = run_dir
        self.enabled = enabled
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.learning_rate = learning_rate
        self.clock = clock
        self.progress = ProgressRecord(run_dir, epochs, steps_per_epoch, enabled=enabled, clock=clock)
        self.events = None
        if enabled:
            from trainer.events import EventWriter

            self.events = EventWriter(run_dir.local)
            self.progress.update(force=True)  # the attempt is visible before the first step
        self._epoch = -1
        self._t_last = clock()

    # -- the loop's hooks ---------------------------------------------------------------------

    def chunk(self, epoch: int, step: int, steps: int, totals: Any) -> None:
        """``steps`` steps ending at ``step`` of epoch ``epoch`` (0-based) returned ``totals``
        ([loss sum, correct, count] over them)."""
        if not self.enabled:
            return
        now = self.clock()
        rate = None
        if epoch == self._epoch and now > self._t_last:  # the first chunk of an epoch has tracing
            rate = float(totals[2]) / (now - self._t_last)
        self._epoch, self._t_last = epoch, now
        count = max(1.0, float(totals[2]))
        try:
            self.events.step(epoch * self.steps_per_epoch + step, float(totals[0]) / count,
                             float(totals[1]) / count, self.learning_rate(), rate)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write TensorBoard events: %s", exc)
        self.progress.step(epoch, step, self.global_batch / rate if rate else 0.0)

    def epoch(self, epochs_completed: int, row: dict) -> None:
        """After the checkpoint of epoch ``epochs_completed`` (1-based)."""
        if not self.enabled:
            return
        try:
            self.events.epoch(epochs_completed, row)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write TensorBoard events: %s", exc)
        self._push_events()
        speed = row.get("images_per_second") or 0.0
        self.progress.epoch_done(epochs_completed, row.get("val_accuracy", 0.0), speed,
                                 self.global_batch / speed if speed else 0.0)
        self._epoch = -1  # evaluation ran in between: the next chunk's time is not a step's

    # -- run's hooks --------------------------------------------------------------------------

    def stopped(self, exc: BaseException) -> None:
        """Training ended early: preempted (a checkpoint was saved) or failed."""
        if not self.enabled:
            return
        self._push_events()
        if isinstance(exc, Preempted):
            self.progress.update(force=True, state="preempted",
                                 preemptions=self.progress.record["preemptions"] + 1)
        else:
            self.progress.update(force=True, state="failed",
                                 error=(str(exc).splitlines() or [type(exc).__name__])[0][:300])

    def finished(self, metrics: dict, report_dir: Path) -> None:
        if not self.enabled:
            return
        try:
            self.events.report_images(int(metrics.get("epochs_completed") or 0), report_dir)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write the report images to TensorBoard: %s", exc)
        self._push_events()
        self.progress.update(force=True, state="finished", eta_seconds=0,
                             test_accuracy=metrics.get("test_accuracy"))

    def cost(self, device_kind: str, device_count: int, train_seconds: float) -> dict:
        """The run's cost facts for ``metrics.json``: over every attempt of this run directory."""
        wall = self.progress.wall_seconds()
        gpus = device_count if device_kind.lower().startswith("gpu") else 0
        record = self.progress.record
        return {
            "device": device_kind,
            "device_count": device_count,
            "wall_seconds": round(wall, 3),
            "train_seconds": round(train_seconds, 3),  # this attempt's training loop
            "gpu_hours": round(gpus * wall / 3600, 4),
            "preemptions_survived": record["preemptions"],
            "attempts": record["attempt"],
        }

    def _push_events(self) -> None:
        if self.events is None:
            return
        try:
            self.events.flush()
            self.run_dir.push(EVENTS_DIR)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot upload the TensorBoard events: %s", exc)
