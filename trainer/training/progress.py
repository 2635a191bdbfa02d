"""The run's progress record, ``<output>/progress.json``: where a running job stands, readable
without logs or API rights.

The trainer rewrites it at every epoch (and at most every ``EVERY_SECONDS`` within a long
epoch) and when the run ends, stops or fails; it is pushed to the run directory like a
checkpoint, so ``python -m jobs status`` and ``python -m jobs runs`` read it from wherever the
run writes (a local directory or ``gs://``). Why a file and not the pod's status: on a locked-down
cluster the trainer's ServiceAccount has no API rights (and no token), and a termination
message exists only once the container has ended. Only the chief writes it.

Fields (``FORMAT`` 1): ``state`` (training, evaluating, finished, preempted, failed), ``epoch``
(completed), ``epochs``, ``step``/``steps_per_epoch`` (within the current epoch),
``val_accuracy`` (last epoch's), ``images_per_second``, ``eta_seconds``, ``started`` and
``updated`` (UTC, ISO 8601), ``attempt`` (1 for the first start of this run directory),
``preemptions``, ``wall_seconds`` (over every attempt), and when finished ``test_accuracy``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from typing import Any

from trainer.storage import RunDir, outage
from trainer.storage.small_files import json_object

log = logging.getLogger(__name__)

FILE = "progress.json"
FORMAT = 1
EVERY_SECONDS = 30.0  # within an epoch; an epoch's end is always written


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str | None) -> dict | None:
    """A progress record from its JSON text; None for none or a torn/foreign file."""
    record = json_object(text)
    return record if record is not None and record.get("format") == FORMAT else None


def eta_seconds(epoch: int, step: int, epochs: int, steps_per_epoch: int,
                seconds_per_step: float) -> float | None:
    """Seconds of training left at ``seconds_per_step``; None before there is a measurement."""
    if seconds_per_step <= 0:
        return None
    left = (epochs - epoch) * steps_per_epoch - step
    return max(0.0, left * seconds_per_step)


class ProgressRecord:
    """Keeps ``progress.json`` of one run directory up to date (a no-op when not ``enabled``)."""

    def __init__(self, run_dir: RunDir, epochs: int, steps_per_epoch: int, enabled: bool = True,
                 clock=time.monotonic):
        self.run_dir = run_dir
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self._last_write = float("-inf")
        previous = self._previous() if enabled else None
        prior = previous or {}
        self.record: dict[str, Any] = {
            "format": FORMAT, "state": "training", "epoch": 0, "epochs": epochs, "step": 0,
            "steps_per_epoch": steps_per_epoch, "val_accuracy": None, "images_per_second": None,
            "eta_seconds": None, "started": prior.get("started") or utc_now(), "updated": utc_now(),
            "attempt": int(prior.get("attempt") or 0) + 1,
            "preemptions": int(prior.get("preemptions") or 0),
            "wall_seconds": float(prior.get("wall_seconds") or 0.0),
        }
        self._prior_seconds = self.record["wall_seconds"]
        self._seconds_per_step = 0.0

    def _previous(self) -> dict | None:
        try:
            if not self.run_dir.pull(FILE):
                return None
            return parse((self.run_dir.local / FILE).read_text())
        except (OSError, ValueError) as exc:  # a record is a convenience: never fail a run on it
            log.warning("cannot read the previous %s: %s", FILE, exc)
            return None

    @property
    def attempt(self) -> int:
        return self.record["attempt"]

    def update(self, force: bool = False, **fields: Any) -> None:
        """Merge ``fields`` into the record; write it when forced or ``EVERY_SECONDS`` passed."""
        self.record.update(fields)
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._last_write < EVERY_SECONDS:
            return
        self._last_write = now
        self.record["updated"] = utc_now()
        self.record["wall_seconds"] = round(self._prior_seconds + (now - self.start), 3)
        path = self.run_dir.local / FILE
        tmp = path.with_name(FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(self.record, indent=1, default=float))
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - visibility must never fail the training
            log.warning("cannot write %s: %s", FILE, exc)
            return
        outage.push(self.run_dir, FILE, FILE)

    def step(self, epoch: int, step: int, seconds_per_step: float) -> None:
        """Within an epoch: ``step`` steps of epoch ``epoch`` (0-based, not yet complete) done."""
        if seconds_per_step > 0:
            self._seconds_per_step = seconds_per_step
        self.update(epoch=epoch, step=step, state="training",
                    eta_seconds=self._eta(epoch, step))
        outage.check()  # storage away for too long: end the run (exit 1) rather than train blind

    def epoch_done(self, epochs_completed: int, val_accuracy: float, images_per_second: float,
                   seconds_per_step: float) -> None:
        if seconds_per_step > 0:
            self._seconds_per_step = seconds_per_step
        self.update(force=True, epoch=epochs_completed, step=0, val_accuracy=float(val_accuracy),
                    images_per_second=float(images_per_second),
                    eta_seconds=self._eta(epochs_completed, 0),
                    state="training" if epochs_completed < self.record["epochs"] else "evaluating")

    def _eta(self, epoch: int, step: int) -> float | None:
        eta = eta_seconds(epoch, step, self.record["epochs"], self.record["steps_per_epoch"],
                          self._seconds_per_step)
        return None if eta is None else round(eta, 1)

    def wall_seconds(self) -> float:
        """Seconds this run directory has been trained in, over every attempt so far."""
        return self._prior_seconds + (self.clock() - self.start)
