"""What the training loop reports to, besides its log: the progress record
(``trainer.training.progress``) and TensorBoard events (``trainer.training.events``), both in the run directory.

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

from trainer.core.errors import Preempted
from trainer.storage import RunDir, outage
from trainer.training.events import DIR as EVENTS_DIR
from trainer.training.events import EventWriter
from trainer.training.progress import ProgressRecord

log = logging.getLogger(__name__)

STEP_EVERY_SECONDS = 1.0  # per-step TensorBoard scalars and the progress record, at most this often


class NullObserver:
    """The hooks, doing nothing (a Trainer used on its own, in tests and benchmarks)."""

    def chunk(self, epoch: int, step: int, steps: int, totals: Any) -> None:
        pass

    def epoch(self, epochs_completed: int, row: dict) -> None:
        pass


class RunObserver(NullObserver):
    def __init__(self, run_dir: RunDir, *, epochs: int, steps_per_epoch: int, global_batch: int,
                 learning_rate: Callable[[], float], enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, ledger=None):
        self.run_dir = run_dir
        self.ledger = ledger  # trainer.training.ledger.Ledger: its heartbeat within epochs
        self.enabled = enabled
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.learning_rate = learning_rate
        self.clock = clock
        self.progress = ProgressRecord(run_dir, epochs, steps_per_epoch, enabled=enabled, clock=clock)
        self.events = None
        if enabled:

            self.events = EventWriter(run_dir.local)
            self.progress.update(force=True)  # the attempt is visible before the first step
        self._epoch = -1
        self._t_last = clock()
        self._pending = [0.0, 0.0, 0.0]
        self._t_chunk = self._t_last

    # -- the loop's hooks ---------------------------------------------------------------------

    def chunk(self, epoch: int, step: int, steps: int, totals: Any) -> None:
        """``steps`` steps ending at ``step`` of epoch ``epoch`` (0-based) returned ``totals``
        ([loss sum, correct, count] over them). Step scalars are written at most every
        ``STEP_EVERY_SECONDS`` (averaged over the chunks since), so a fast model does not
        spend its time writing events (one write costs a few ms)."""
        if not self.enabled:
            return
        if self.ledger is not None:
            self.ledger.heartbeat()
        now = self._t_chunk = self.clock()
        if epoch != self._epoch:  # the first chunk of an epoch includes tracing or evaluation
            self._epoch, self._t_last, self._pending = epoch, now, [0.0, 0.0, 0.0]
            return
        self._pending = [a + float(b) for a, b in zip(self._pending, totals[:3])]
        if now - self._t_last >= STEP_EVERY_SECONDS:
            rate = self._write_steps(epoch * self.steps_per_epoch + step, now)
            self.progress.step(epoch, step, self.global_batch / rate if rate else 0.0)

    def _write_steps(self, global_step: int, now: float) -> float | None:
        """The step scalars averaged over the chunks since the last write; returns images/s."""
        loss_sum, correct, count = self._pending
        if not count:
            return None
        rate = count / (now - self._t_last) if now > self._t_last else None
        self._t_last, self._pending = now, [0.0, 0.0, 0.0]
        try:
            self.events.step(global_step, loss_sum / count, correct / count, self.learning_rate(), rate)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write TensorBoard events: %s", exc)
        return rate

    def epoch(self, epochs_completed: int, row: dict) -> None:
        """After the checkpoint of epoch ``epochs_completed`` (1-based)."""
        if not self.enabled:
            return
        if self._epoch == epochs_completed - 1:  # the epoch's last chunks, not written yet
            self._write_steps(epochs_completed * self.steps_per_epoch, self._t_chunk)
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
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write the TensorBoard events: %s", exc)
            return
        outage.push(self.run_dir, EVENTS_DIR, "the TensorBoard events")
