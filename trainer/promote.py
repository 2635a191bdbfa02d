"""Promotion: copy a run's model and report to a serving location only if it is better.

Nightly retraining picks up new data; the model it serves must never get worse. With
``promote_to: URI`` the run evaluates the model currently at ``URI/model/`` on *this run's*
test split (same images, same labels: a fair comparison even when the data changed) and
publishes the new model and report there only when the new test accuracy is strictly higher.
A current model with other classes or another input size cannot be compared and is left in
place. The decision is recorded in ``report/metrics.json`` under ``promotion``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.storage import open_run_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    target: str
    promote: bool
    reason: str
    new_accuracy: float
    current_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(target_uri: str, scratch: Path, new_accuracy: float, class_names: list[str], image_size: int,
           evaluate_current) -> Decision:
    """Compare with the model at ``target_uri``; ``evaluate_current(model) -> accuracy``."""
    import keras

    target = open_run_dir(target_uri, scratch)
    if not (target.pull("model/model_info.json") and target.pull("model/model.keras")):
        return Decision(target_uri, True, "no model there yet", new_accuracy)
    info = json.loads((target.local / "model" / "model_info.json").read_text())
    if info.get("class_names") != list(class_names) or info.get("image_size") != image_size:
        return Decision(target_uri, False, "the current model has other classes or another input size; "
                        "promote by hand if intended", new_accuracy)
    current = keras.saving.load_model(target.local / "model" / "model.keras")
    current_accuracy = float(evaluate_current(current))
    better = new_accuracy > current_accuracy
    reason = (f"test accuracy {new_accuracy:.4f} {'>' if better else '<='} current model's "
              f"{current_accuracy:.4f} on the same test split")
    return Decision(target_uri, better, reason, new_accuracy, current_accuracy)


def publish(target_uri: str, scratch: Path, write_model, write_report) -> None:
    """Write the model and the report into staging at the target, then publish each whole."""
    target = open_run_dir(target_uri, scratch)
    for rel, write in (("model", write_model), ("report", write_report)):
        staging = target.staging(rel)
        write(staging)
        target.publish(staging, rel)
    log.info("promoted the model and report to %s", target_uri)


def accuracy_of(model, batches) -> float:
    """Top-1 accuracy of ``model`` over ``(images, labels)`` batches."""
    correct = total = 0
    for images, labels in batches:
        probs = model(np.asarray(images, np.float32), training=False)
        correct += int((np.asarray(probs).argmax(-1) == labels.numpy()).sum())
        total += int(labels.shape[0])
    return correct / max(1, total)
