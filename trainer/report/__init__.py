"""The evaluation report of a run: numbers, plots and one HTML page.

Two steps, neither of which imports TensorFlow (and ``import trainer.report`` imports neither
matplotlib nor scikit-learn: they load on first use):

* ``build_metrics(...) -> dict`` (``metrics.py``): the JSON facts, pure.
* ``write_report(out_dir, ...)`` (here) writes into ``out_dir`` (names in ``files.py``)::

      metrics.json                   the dict above
      learning_curves.png            accuracy and loss per epoch, train vs validation (plots.py)
      confusion_matrix.png           counts, annotated (colours only above 30 classes)
      confusion_matrix_normalized.png  the same, each row divided by its class's test count
      predictions.png                up to 25 test images, predicted vs true, green/red
      report.html                    one page showing all of it plus the resolved config (page.py)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from trainer.report.files import (
    CONFUSION_FILE,
    CONFUSION_NORMALIZED_FILE,
    CURVES_FILE,
    HTML_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from trainer.report.metrics import as_labels, build_metrics, plain
from trainer.report.page import render_html, worst_classes
from trainer.report.plots import (
    pick_examples,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_predictions,
)

__all__ = [
    "CONFUSION_FILE", "CONFUSION_NORMALIZED_FILE", "CURVES_FILE", "HTML_FILE", "METRICS_FILE",
    "PREDICTIONS_FILE", "build_metrics", "pick_examples", "render_html", "worst_classes",
    "write_report",
]

log = logging.getLogger(__name__)


def write_report(
    out_dir: Path,
    *,
    metrics: dict,
    images: np.ndarray,
    probs: np.ndarray,
    y_true: np.ndarray,
    config: dict,
) -> None:
    """Write metrics.json, the plots and report.html into ``out_dir`` (created if missing).

    ``metrics`` comes from ``build_metrics``. ``images`` (N x H x W x C uint8, or float in
    [0, 1]; C = 1 or 3, or N x H x W), ``probs`` (N x classes, softmax output) and ``y_true``
    (N class indices) are aligned test examples: the whole test split, or its first N images.
    ``config`` is the resolved run config, shown as YAML.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(metrics["class_names"])
    images = np.asarray(images)
    probs = np.asarray(probs, dtype=np.float64)
    y_true = as_labels(y_true, "y_true", len(class_names))
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must be N x {len(class_names)}, got shape {probs.shape}")
    if not len(images) == len(probs) == len(y_true):
        raise ValueError(f"images, probs and y_true must be aligned: got {len(images)}, "
                         f"{len(probs)} and {len(y_true)} rows")

    (out_dir / METRICS_FILE).write_text(
        json.dumps(plain(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plot_learning_curves(out_dir / CURVES_FILE, metrics["history"],
                         test_accuracy=metrics.get("test_accuracy"),
                         test_loss=metrics.get("test_loss"))
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    plot_confusion_matrix(out_dir / CONFUSION_FILE, cm, class_names, normalize=False)
    plot_confusion_matrix(out_dir / CONFUSION_NORMALIZED_FILE, cm, class_names, normalize=True)
    caption = plot_predictions(out_dir / PREDICTIONS_FILE, images, probs, y_true, class_names)
    (out_dir / HTML_FILE).write_text(
        render_html(metrics, config, predictions_caption=caption), encoding="utf-8")
    log.debug("report: wrote %s (test accuracy %.4f)", out_dir / HTML_FILE,
             metrics["test_accuracy"])


