"""Checkpoints that survive preemption, on a local disk or in a bucket.

A checkpoint is ``checkpoints/ckpt-EEEE-SSSSSS.*`` (TensorFlow's format: model weights and
optimizer state) plus the marker ``checkpoints/latest.json``, written and pushed *after* the
checkpoint's files are durable. The marker names the checkpoint, the position in training
(completed epochs, steps into the current epoch), the history so far and the running sums of
a half-done epoch. A checkpoint without a marker does not exist: a run killed while uploading
resumes from the previous complete one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.storage import RunDir

log = logging.getLogger(__name__)

MARKER = "checkpoints/latest.json"
FORMAT_VERSION = 1


@dataclass
class Position:
    """Where training stands; saved in the marker and restored with the weights."""

    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in epoch ``epoch`` (0 at an epoch boundary)
    history: dict[str, list[float]] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)  # running sums of a half-done epoch


class Checkpointer:
    def __init__(self, run_dir: RunDir, model, optimizer, keep: int, is_chief: bool = True):
        import tensorflow as tf

        self.run_dir = run_dir
        self.keep = keep
        self.is_chief = is_chief  # multi-worker: only the chief writes to the run directory
        self.local_dir = run_dir.local / "checkpoints"
        if is_chief:
            self.local_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)

    def restore(self) -> Position | None:
        """Load the newest complete checkpoint; None when the run starts from scratch."""
        if not self.run_dir.pull(MARKER):
            return None
        marker = json.loads((self.run_dir.local / MARKER).read_text())
        for name in marker["files"]:
            if not self.run_dir.pull(f"checkpoints/{name}"):
                raise FileNotFoundError(f"checkpoint file {name} named by {MARKER} is missing")
        prefix = self.local_dir / marker["checkpoint"]
        self.ckpt.read(str(prefix)).assert_existing_objects_matched()
        pos = Position(marker["epoch"], marker["step"], marker["history"], marker.get("partial", {}))
        log.info("resuming from checkpoint %s (epoch %d, step %d)", marker["checkpoint"], pos.epoch, pos.step)
        return pos

    def save(self, pos: Position) -> str:
        """Write weights + optimizer state, make them durable, then the marker. Returns the name."""
        name = f"ckpt-{pos.epoch:04d}-{pos.step:06d}"
        if not self.is_chief:
            # Every model and optimizer variable is a MirroredVariable (ON_WRITE): worker 0's
            # copy is the whole state and writing it needs no collective, so the others skip it.
            return name
        prefix = self.local_dir / name
        self.ckpt.write(str(prefix))
        files = sorted(p.name for p in self.local_dir.glob(name + ".*"))
        for f in files:
            self.run_dir.push(f"checkpoints/{f}")
        marker = {"format": FORMAT_VERSION, "checkpoint": name, "files": files, **asdict(pos)}
        tmp = self.run_dir.local / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1))
        os.replace(tmp, self.run_dir.local / MARKER)
        self.run_dir.push(MARKER)
        self._prune(keep_name=name)
        log.debug("checkpoint %s saved", name)
        return name

    def _prune(self, keep_name: str) -> None:
        """Delete checkpoints beyond the newest ``keep``, here and at the destination (never the current one)."""
        names = sorted({p.name.split(".")[0] for p in self.local_dir.glob("ckpt-*.index")})
        for old in [n for n in names if n != keep_name][: max(0, len(names) - self.keep)]:
            for f in self.local_dir.glob(old + ".*"):
                self.run_dir.remove(f"checkpoints/{f.name}")


def read_marker(run_root: Path) -> dict | None:
    """The marker of a local run directory, or None (for tools and tests)."""
    path = run_root / MARKER
    return json.loads(path.read_text()) if path.exists() else None
