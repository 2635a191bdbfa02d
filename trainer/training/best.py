"""The best validation epoch: keep its weights, evaluate and export those (``export_epoch``).

The last epoch is not the best one when validation accuracy swings between epochs (batch norm
on a small validation split, a learning rate still high). After every epoch that beats all the
earlier ones on validation accuracy (ties: lower validation loss, then the earlier epoch), its
weights are written to ``checkpoints/best-EEEE.weights.h5`` (pushed to the run directory like
any checkpoint file) and the previous best file is deleted.

Which epoch is best is a pure function of the history, and the history is in every
checkpoint's marker, so a resumed run needs no extra state: it knows the best epoch from the
marker and pulls that epoch's file when it needs it. A run killed after writing a best file
but before the epoch's checkpoint retrains that epoch and writes the file again.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PREFIX = "checkpoints/best-"
SUFFIX = ".weights.h5"


def best_epoch(history: dict[str, list[float]]) -> int | None:
    """0-based index of the best epoch by validation accuracy, or None before the first epoch."""
    acc = history.get("val_accuracy", [])
    loss = history.get("val_loss", [float("nan")] * len(acc))
    if not acc:
        return None
    return max(range(len(acc)), key=lambda i: (acc[i], -loss[i] if loss[i] == loss[i] else 0.0, -i))


def _rel(epoch: int) -> str:
    return f"{PREFIX}{epoch + 1:04d}{SUFFIX}"


class BestWeights:
    """Saves the best epoch's weights as training goes, and loads them back at the end."""

    def __init__(self, run_dir, model, is_chief: bool = True):
        self.run_dir = run_dir
        self.model = model
        self.is_chief = is_chief

    def after_epoch(self, epoch: int, history: dict[str, list[float]]) -> None:
        """Call after ``epoch``'s validation row is in ``history`` and before its checkpoint."""
        if best_epoch(history) != epoch:
            return
        if not self.is_chief:
            return  # other workers write nothing shared; ``select`` reads worker 0's file
        rel = _rel(epoch)
        path = self.run_dir.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(str(path))
        self.run_dir.push(rel)
        for old in path.parent.glob(f"{PREFIX.rsplit('/', 1)[1]}*{SUFFIX}"):
            if old.name != path.name:
                self.run_dir.remove(f"checkpoints/{old.name}")

    def select(self, history: dict[str, list[float]], mode: str) -> tuple[int, str]:
        """Load the weights to evaluate and export; returns (1-based epoch, why that one)."""
        last = len(history.get("val_accuracy", []))
        acc = history.get("val_accuracy", [])
        if mode == "last" or not acc:
            return last, f"the last epoch, {last} (export_epoch: last)"
        best = best_epoch(history)
        if best == last - 1:
            return last, f"epoch {last} of {last}: the best validation accuracy ({acc[best]:.4f}) is the last epoch's"
        rel = _rel(best)
        if not self.run_dir.pull(rel):
            log.warning("the best epoch's weights (%s) are missing; evaluating the last epoch", rel)
            return last, (f"the last epoch, {last}: epoch {best + 1} had the best validation accuracy "
                          f"but its weights were not kept")
        self.model.load_weights(str(self.run_dir.local / rel))
        log.info("restored epoch %d's weights (val_accuracy %.4f, last epoch %.4f) for evaluation and export",
                 best + 1, acc[best], acc[-1])
        return best + 1, (f"epoch {best + 1} of {last}: the best validation accuracy "
                          f"({acc[best]:.4f}; the last epoch had {acc[-1]:.4f})")
