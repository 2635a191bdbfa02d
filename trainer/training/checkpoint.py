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
import time
from dataclasses import asdict, dataclass, field

from trainer.core.errors import ConfigError, DataError
from trainer.core.quoting import brief
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


def exists(run_dir: RunDir) -> bool:
    """True when the run directory holds a complete checkpoint (its marker)."""
    return run_dir.pull(MARKER)


def finished(run_dir: RunDir, epochs: int) -> bool:
    """True when the run directory's last checkpoint has all ``epochs`` trained."""
    if not run_dir.pull(MARKER):
        return False
    try:
        return json.loads((run_dir.local / MARKER).read_text()).get("epoch", 0) >= epochs
    except (OSError, ValueError):
        return False


class Checkpointer:
    """Saves and restores one run's checkpoints.

    ``meta`` (e.g. the class names and the model) is written into every marker and checked on
    restore, so a run directory is never resumed by a different model or class list. A marker
    or checkpoint that cannot be read is a DataError and a checkpoint that does not fit the
    model a ConfigError: a retry cannot fix either, so neither may exit 1.

    ``is_chief=False`` on the other workers of a multi-worker run (``run.py`` passes
    ``runtime.is_chief``): such a worker restores from the chief's checkpoints but writes
    nothing to the run directory; its ``save`` only returns the name the chief writes under.
    """

    def __init__(self, run_dir: RunDir, model, optimizer, keep: int, is_chief: bool = True,
                 meta: dict | None = None):
        import tensorflow as tf  # lazy, like every TensorFlow import: `jobs` and --help stay light

        self.run_dir = run_dir
        self.keep = keep
        self.is_chief = is_chief
        self.meta = dict(meta or {})
        self.local_dir = run_dir.local / "checkpoints"
        if is_chief:
            self.local_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.save_seconds: list[float] = []  # wall time of each save: write + upload + marker
        self.after_save: list = []  # callables run after each complete save (e.g. upload the log)
        self._restored: tuple[Position | None] | None = None

    def _where(self, rel: str) -> str:
        return self.run_dir.uri_of(rel)

    def _corrupt(self, what: str, detail: str) -> DataError:
        return DataError(f"{what} is unreadable ({brief(detail, 120)}); delete "
                         f"{self._where('checkpoints/')} to start the run over, or use a new --output")

    def restore(self) -> Position | None:
        """Load the newest complete checkpoint; None when the run starts from scratch.

        Idempotent: the run restores before writing its config, the loop asks again.
        """
        if self._restored is None:
            self._restored = (self._restore(),)
        return self._restored[0]

    def _restore(self) -> Position | None:
        if not self.run_dir.pull(MARKER):
            return None
        try:
            marker = json.loads((self.run_dir.local / MARKER).read_text())
            pos = Position(int(marker["epoch"]), int(marker["step"]), dict(marker["history"]),
                           dict(marker.get("partial", {})))
            name, files = str(marker["checkpoint"]), [str(f) for f in marker["files"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._corrupt(f"checkpoint marker {self._where(MARKER)}", f"{type(exc).__name__}: {exc}") from None
        for key, value in self.meta.items():
            if key in marker and marker[key] != value:
                raise ConfigError(
                    f"{self._where('checkpoints/')} was trained with {key} {brief(marker[key])}, this "
                    f"run has {brief(value)}; use a new --output, or delete checkpoints/ to start over")
        for f in files:
            if not self.run_dir.pull(f"checkpoints/{f}"):
                raise DataError(f"checkpoint file {self._where('checkpoints/' + f)} named by {MARKER} is "
                                f"missing; delete {self._where('checkpoints/')} to start the run over")
        import tensorflow as tf

        prefix = self.local_dir / name
        try:
            self.ckpt.read(str(prefix)).assert_existing_objects_matched()
        except (ValueError, AssertionError) as exc:  # shapes or structure: another model/classes
            raise ConfigError(
                f"checkpoint {self._where('checkpoints/' + name)} does not fit this model "
                f"({brief(str(exc), 120)}); the model or class list changed: use a new --output, or "
                "delete checkpoints/ to start over") from None
        except (tf.errors.OpError, IndexError, OSError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"checkpoint {self._where('checkpoints/' + name)}",
                                f"{type(exc).__name__}: {exc}") from None
        log.info("resuming from checkpoint %s (epoch %d, step %d)", name, pos.epoch, pos.step)
        return pos

    def save(self, pos: Position) -> str:
        """Write weights + optimizer state, make them durable, then the marker. Returns the name."""
        name = f"ckpt-{pos.epoch:04d}-{pos.step:06d}"
        if not self.is_chief:
            # Every model and optimizer variable is a MirroredVariable (ON_WRITE): worker 0's
            # copy is the whole state and writing it needs no collective, so the others skip it.
            return name
        start = time.monotonic()
        prefix = self.local_dir / name
        self.ckpt.write(str(prefix))
        files = sorted(p.name for p in self.local_dir.glob(name + ".*"))
        for f in files:
            self.run_dir.push(f"checkpoints/{f}")
        marker = {"format": FORMAT_VERSION, "checkpoint": name, "files": files, **self.meta, **asdict(pos)}
        tmp = self.run_dir.local / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1))
        os.replace(tmp, self.run_dir.local / MARKER)
        self.run_dir.push(MARKER)
        self._prune(keep_name=name)
        self.save_seconds.append(time.monotonic() - start)
        log.debug("checkpoint %s saved in %.2fs", name, self.save_seconds[-1])
        for hook in self.after_save:
            hook()
        return name

    def _prune(self, keep_name: str) -> None:
        """Delete checkpoints beyond the newest ``keep``, here and at the destination (never the current one)."""
        names = sorted({p.name.split(".")[0] for p in self.local_dir.glob("ckpt-*.index")})
        for old in [n for n in names if n != keep_name][: max(0, len(names) - self.keep)]:
            for f in self.local_dir.glob(old + ".*"):
                self.run_dir.remove(f"checkpoints/{f.name}")
