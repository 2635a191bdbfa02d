"""The report folder's file names: written by ``write_report``, linked by the HTML page, and
part of the trainer's output contract (README, ``<output>/report/``)."""

METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
CONFUSION_NORMALIZED_FILE = "confusion_matrix_normalized.png"
PREDICTIONS_FILE = "predictions.png"
HTML_FILE = "report.html"
