"""The run's evaluation numbers: a pure function from predictions to a JSON-safe dict.

``build_metrics(...) -> dict``: test accuracy and loss, the confusion matrix (rows = true
class, columns = predicted class, every class even when absent from the test split),
precision/recall/F1/support per class and averaged, the per-epoch training history, and
whatever ``extra`` facts the trainer adds (model, replicas, images/s, wall time, ...).
``trainer/run.py`` adds two more once the report is drawn: ``phase_seconds`` (this attempt's
phases) and ``ledger`` (every wall second of the run over its attempts, and its goodput:
``trainer.training.ledger``).
The result holds only plain ints, floats (non-finite ones become ``null``), strings, lists
and dicts, so it is written as JSON as is. scikit-learn is imported on first use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Keys build_metrics computes itself; ``extra`` may add keys but never replace these.
CORE_KEYS = (
    "test_accuracy", "test_loss", "num_test_images", "epochs_completed", "class_names",
    "per_class", "macro_avg", "weighted_avg", "confusion_matrix", "history",
)


def build_metrics(
    *,
    class_names: list[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    test_loss: float,
    history: dict[str, list[float]],
    epochs_completed: int,
    extra: dict | None = None,
) -> dict:
    """The run's evaluation numbers as a JSON-safe dict (see the module docstring).

    ``y_true`` and ``y_pred`` are class indices into ``class_names``, one per test image.
    ``history`` maps a name (``loss``, ``val_accuracy``, ``learning_rate``, ...) to one value
    per epoch and is passed through as is. ``test_accuracy`` is computed from the predictions.
    """
    from sklearn.metrics import confusion_matrix  # heavy: imported on use

    n = len(class_names)
    if n == 0:
        raise ValueError("class_names is empty")
    y_true = as_labels(y_true, "y_true", n)
    y_pred = as_labels(y_pred, "y_pred", n)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("the test set is empty: nothing to evaluate")

    cm = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    metrics: dict[str, Any] = {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "test_loss": finite_or_none(test_loss),
        "num_test_images": int(y_true.size),
        "epochs_completed": int(epochs_completed),
        "class_names": [str(c) for c in class_names],
        **_class_scores(y_true, y_pred, class_names),
        "confusion_matrix": cm.astype(int).tolist(),
        "history": {str(k): [finite_or_none(v) for v in vals] for k, vals in history.items()},
    }
    for key, value in (extra or {}).items():
        if key in CORE_KEYS:
            log.warning("report: ignoring extra[%r]; that metric is computed from the predictions", key)
            continue
        metrics[str(key)] = plain(value)
    return metrics


def _class_scores(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """``per_class`` precision/recall/F1/support by class name, and their macro and weighted
    averages (a class with no test images scores 0, never NaN)."""
    from sklearn.metrics import precision_recall_fscore_support  # heavy: imported on use

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(s[i])}
        for i, name in enumerate(class_names)
    }

    def average(kind: str) -> dict[str, float]:
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=kind, zero_division=0)
        return {"precision": float(ap), "recall": float(ar), "f1": float(af)}

    return {"per_class": per_class, "macro_avg": average("macro"), "weighted_avg": average("weighted")}


def as_labels(values: Any, name: str, n: int) -> np.ndarray:
    """``values`` as a flat int64 array of class indices in 0..n-1; ValueError otherwise."""
    arr = np.asarray(values).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold class indices (integers), got {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} has class indices outside 0..{n - 1}: "
                         f"min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def finite_or_none(value: Any) -> float | None:
    """A float, or None for None, NaN and infinities (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def plain(value: Any) -> Any:
    """``value`` made of JSON/YAML-safe types only (numpy -> Python, NaN -> None, Path -> str)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)
