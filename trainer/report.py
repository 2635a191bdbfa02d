"""The evaluation report of a run: numbers, plots and one HTML page.

Two pure-ish steps, neither of which imports TensorFlow:

* ``build_metrics(...) -> dict``: test accuracy and loss, the confusion matrix (rows = true
  class, columns = predicted class, every class even when absent from the test split),
  precision/recall/F1/support per class and averaged, the per-epoch training history, and
  whatever ``extra`` facts the trainer adds (model, replicas, images/s, wall time, ...).
  The result holds only plain ints, floats (non-finite ones become ``null``), strings, lists
  and dicts, so it is written as JSON as is.
* ``write_report(out_dir, ...)`` writes into ``out_dir``::

      metrics.json                   the dict above
      learning_curves.png            accuracy and loss per epoch, train vs validation
      confusion_matrix.png           counts, annotated (colours only above 30 classes)
      confusion_matrix_normalized.png  the same, each row divided by its class's test count
      predictions.png                up to 25 test images, predicted vs true, green/red
      report.html                    one page showing all of it plus the resolved config

  ``report.html`` links the PNGs by relative file name, so the folder works when opened from
  disk or downloaded from a bucket, and needs no network (no external CSS, fonts or JS).

Plots are drawn with ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no GUI
backend, no global state). matplotlib is imported on first use, after pointing
``MPLCONFIGDIR`` at a temporary directory when the home directory is not writable (a pod with
a read-only root filesystem and a user absent from ``/etc/passwd``).
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
CONFUSION_NORMALIZED_FILE = "confusion_matrix_normalized.png"
PREDICTIONS_FILE = "predictions.png"
HTML_FILE = "report.html"

GRID_SIDE = 5  # the predictions grid is at most GRID_SIDE x GRID_SIDE images
ANNOTATE_MAX_CLASSES = 30  # above this many classes the confusion matrix shows colours only
DPI = 100
GREEN = "#1a7f37"
RED = "#cf222e"

# Keys build_metrics computes itself; ``extra`` may add keys but never replace these.
_CORE_KEYS = (
    "test_accuracy", "test_loss", "num_test_images", "epochs_completed", "class_names",
    "per_class", "macro_avg", "weighted_avg", "confusion_matrix", "history",
)


# --------------------------------------------------------------------------- metrics


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
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n = len(class_names)
    if n == 0:
        raise ValueError("class_names is empty")
    y_true = _as_labels(y_true, "y_true", n)
    y_pred = _as_labels(y_pred, "y_pred", n)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("the test set is empty: nothing to evaluate")

    labels = list(range(n))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
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

    metrics: dict[str, Any] = {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "test_loss": _finite_or_none(test_loss),
        "num_test_images": int(y_true.size),
        "epochs_completed": int(epochs_completed),
        "class_names": [str(c) for c in class_names],
        "per_class": per_class,
        "macro_avg": average("macro"),
        "weighted_avg": average("weighted"),
        "confusion_matrix": cm.astype(int).tolist(),
        "history": {str(k): [_finite_or_none(v) for v in vals] for k, vals in history.items()},
    }
    for key, value in (extra or {}).items():
        if key in _CORE_KEYS:
            log.warning("report: ignoring extra[%r]; that metric is computed from the predictions", key)
            continue
        metrics[str(key)] = _plain(value)
    return metrics


def _as_labels(values: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold class indices (integers), got {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} has class indices outside 0..{n - 1}: "
                         f"min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """``value`` made of JSON/YAML-safe types only (numpy -> Python, NaN -> None, Path -> str)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


# --------------------------------------------------------------------------- report


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
    y_true = _as_labels(y_true, "y_true", len(class_names))
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must be N x {len(class_names)}, got shape {probs.shape}")
    if not len(images) == len(probs) == len(y_true):
        raise ValueError(f"images, probs and y_true must be aligned: got {len(images)}, "
                         f"{len(probs)} and {len(y_true)} rows")

    (out_dir / METRICS_FILE).write_text(
        json.dumps(_plain(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
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


# --------------------------------------------------------------------------- plots


@functools.cache
def _matplotlib() -> tuple[type, type]:
    """(Figure, FigureCanvasAgg), importing matplotlib with a writable config/cache dir."""
    if not os.environ.get("MPLCONFIGDIR") and not _default_mpl_dirs_writable():
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")
        log.debug("report: MPLCONFIGDIR=%s (home not writable)", os.environ["MPLCONFIGDIR"])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _default_mpl_dirs_writable() -> bool:
    """Whether matplotlib's default config and cache dirs (XDG, else ~/.config, ~/.cache) work."""
    home = os.path.expanduser("~")
    if home == "~":  # no HOME and a uid absent from /etc/passwd
        return False
    for env, fallback in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache")):
        path = os.path.join(os.environ.get(env) or os.path.join(home, fallback), "matplotlib")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return False
        if not os.access(path, os.W_OK):
            return False
    return True


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(width, height), dpi=DPI, layout=layout)
    canvas_cls(fig)
    return fig


def _save(fig: Any, path: Path, tight: bool = False) -> None:
    extra = {"bbox_inches": "tight", "pad_inches": 0.15} if tight else {}
    fig.savefig(path, dpi=DPI, facecolor="white", **extra)
    fig.clear()  # no pyplot: nothing global holds the figure once it goes out of scope


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _series(history: Mapping[str, Sequence[Any]], *names: str) -> list[float] | None:
    for name in names:
        values = history.get(name)
        if values:
            return [np.nan if v is None else float(v) for v in values]
    return None


def plot_learning_curves(path: Path, history: Mapping[str, Sequence[Any]], *,
                         test_accuracy: float | None = None,
                         test_loss: float | None = None) -> None:
    """Two panels, accuracy and loss per epoch (1, 2, ...): train, validation, final test."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = _new_figure(11, 4.2)
    panels = (
        ("Accuracy", ("accuracy", "sparse_categorical_accuracy"),
         ("val_accuracy", "val_sparse_categorical_accuracy"), test_accuracy, "upper"),
        ("Loss", ("loss",), ("val_loss",), test_loss, "lower"),
    )
    n_epochs = 0
    for i, (title, train_keys, val_keys, test_value, better) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        drawn = False
        for label, keys, color, style in (("train", train_keys, "#1f77b4", "-"),
                                          ("validation", val_keys, "#ff7f0e", "-")):
            values = _series(history, *keys)
            if values is None:
                continue
            epochs = np.arange(1, len(values) + 1)
            n_epochs = max(n_epochs, len(values))
            ax.plot(epochs, values, style, marker="o", markersize=4, color=color, label=label)
            drawn = True
            if label == "validation" and np.isfinite(values).any():
                pick = np.nanargmax if better == "upper" else np.nanargmin
                best = int(pick(values))
                ax.plot(best + 1, values[best], marker="*", markersize=13, color=color,
                        linestyle="none", label=f"best val: epoch {best + 1}")
        if test_value is not None and math.isfinite(test_value):
            ax.axhline(test_value, color="#555555", linestyle="--", linewidth=1,
                       label=f"test: {test_value:.3f}" if title == "Loss"
                       else f"test: {test_value:.1%}")
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if title == "Accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        if drawn:
            ax.legend(loc="lower right" if better == "upper" else "upper right", fontsize=9)
        else:
            ax.text(0.5, 0.5, f"no {title.lower()} recorded", ha="center", va="center",
                    transform=ax.transAxes, color="#777777")
    if n_epochs:
        for ax in fig.axes:
            ax.set_xlim(0.5, n_epochs + 0.5)
    fig.suptitle(f"Learning curves ({n_epochs} epoch{'s' if n_epochs != 1 else ''})",
                 fontsize=13)
    _save(fig, path)


def plot_confusion_matrix(path: Path, cm: np.ndarray, class_names: Sequence[str], *,
                          normalize: bool = False) -> None:
    """Heatmap of ``cm`` (rows true, columns predicted), sized to stay readable at 50 classes.

    ``normalize`` divides each row by its total (recall on the diagonal); rows of classes with
    no test images stay empty. Cells are annotated up to ``ANNOTATE_MAX_CLASSES`` classes.
    """
    from matplotlib.colors import Normalize

    n = len(class_names)
    cm = np.asarray(cm, dtype=np.float64)
    row_totals = cm.sum(axis=1, keepdims=True)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(row_totals > 0, cm / row_totals, 0.0)
        vmax = 1.0
    else:
        values = cm
        vmax = max(float(cm.max()), 1.0)

    cell = max(0.22, min(0.65, 0.75 - 0.0085 * n, 22.0 / n))  # inches per cell
    labels = [_short(str(c)) for c in class_names]
    longest = max(len(s) for s in labels)
    tick_size = 10 if n <= 15 else 8 if n <= 30 else 7 if n <= 60 else 5
    label_room = 0.5 + longest * tick_size * 0.55 / 72  # inches for the tick labels
    side = max(n * cell, 3.0)
    width, height = side + label_room + 2.0, side + label_room + 1.2
    # No constrained layout: with a square axes and long rotated labels it can leave the title
    # outside the figure. Fixed margins, then a tight bounding box when saving.
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=label_room / width, right=1 - 0.3 / width,
                        bottom=label_room / height, top=1 - 0.8 / height)
    ax = fig.add_subplot(1, 1, 1)
    cmap = "Blues"
    norm = Normalize(vmin=0.0, vmax=vmax)
    im = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, pad=0.02, shrink=0.9 if n <= 15 else 0.5, aspect=25)
    cbar.set_label("share of the true class" if normalize else "test images")

    if n <= ANNOTATE_MAX_CLASSES:
        colors = im.cmap(norm(values))
        chars = 4 if normalize else len(str(int(values.max())))
        font = max(6.0, min(11.0, side / n * 72 * 0.8 / (0.62 * max(chars, 2))))
        for (i, j), v in np.ndenumerate(values):
            if normalize:
                if v == 0:  # blank zeros: the few mistakes stand out
                    continue
                text = f"{v:.0%}" if v >= 0.005 else "<1%"
            else:
                text = f"{int(v)}"
            r, g, b, _ = colors[i, j]
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            if v == 0:
                color = "#c0c0c0"
            else:
                color = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=font, color=color)

    ticks = np.arange(n)[:: 1 if n <= 100 else math.ceil(n / 100)]
    shown = [labels[t] for t in ticks]
    if longest <= 2 and n <= 20:
        ax.set_xticks(ticks, shown, fontsize=tick_size)
    elif n <= 30:
        ax.set_xticks(ticks, shown, fontsize=tick_size, rotation=45, ha="right",
                      rotation_mode="anchor")
    else:
        ax.set_xticks(ticks, shown, fontsize=tick_size, rotation=90)
    ax.set_yticks(ticks, shown, fontsize=tick_size)
    ax.set_xlabel("Predicted label", fontsize=11)
    ax.set_ylabel("True label", fontsize=11)
    if n <= 60:  # thin white lines between cells (two collections, cheaper than minor ticks)
        edges = np.arange(-0.5, n, 1.0)
        ax.hlines(edges, -0.5, n - 0.5, colors="white", linewidth=0.6)
        ax.vlines(edges, -0.5, n - 0.5, colors="white", linewidth=0.6)
    ax.spines[:].set_visible(False)
    total = int(cm.sum())
    correct = int(np.trace(cm))
    title = ("Confusion matrix, normalized by true class" if normalize
             else "Confusion matrix (test images)")
    subtitle = f"{correct} of {total} correct ({correct / total:.1%})" if total else "no test images"
    if n > ANNOTATE_MAX_CLASSES:
        subtitle += "; see metrics.json for counts"
    ax.set_title(f"{title}\n{subtitle}", fontsize=12)
    _save(fig, path, tight=True)


def pick_examples(y_true: np.ndarray, y_pred: np.ndarray,
                  k: int = GRID_SIDE * GRID_SIDE) -> tuple[np.ndarray, str]:
    """Which test images the grid shows, in index order, and a sentence saying how they were chosen.

    Deterministic: the first misclassified images (at most a third of the grid) and the first
    correctly classified ones fill the grid, so mistakes are always visible when there are any.
    """
    wrong = np.flatnonzero(y_true != y_pred)
    right = np.flatnonzero(y_true == y_pred)
    k = min(k, len(y_true))
    n_wrong = min(len(wrong), max(k // 3, 1) if len(wrong) else 0)
    n_right = min(len(right), k - n_wrong)
    n_wrong = min(len(wrong), k - n_right)  # too few correct ones: show more mistakes
    chosen = np.sort(np.concatenate([wrong[:n_wrong], right[:n_right]])).astype(np.int64)
    total = len(y_true)
    if n_wrong == 0:
        how = f"the first {k} of {total} test images (all classified correctly)"
    elif n_right == 0:
        how = f"the first {k} of {total} test images (all misclassified)"
    else:
        how = (f"the first {n_right} correctly classified and the first {n_wrong} misclassified "
               f"test images ({len(wrong)} of {total} misclassified in all)")
    return chosen, how


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image imshow draws as intended, and the colormap to use (None for RGB)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype == np.uint8:
        pass
    elif np.issubdtype(img.dtype, np.integer):
        img = np.clip(img, 0, 255).astype(np.uint8)
    else:
        img = img.astype(np.float64)
        if np.nanmax(img, initial=0.0) > 1.0 + 1e-6:  # float but on a 0..255 scale
            img = img / 255.0
        img = np.clip(np.nan_to_num(img), 0.0, 1.0)
    if img.ndim == 2:
        return img, "gray"
    return img, None


def plot_predictions(path: Path, images: np.ndarray, probs: np.ndarray, y_true: np.ndarray,
                     class_names: Sequence[str]) -> str:
    """Up to 5x5 test images titled "pred: X (97%) / true: Y", green when right, red when wrong.

    Returns the sentence saying which images are shown (also the figure's title).
    """
    y_pred = probs.argmax(axis=1)
    chosen, how = pick_examples(y_true, y_pred)
    k = len(chosen)
    if k == 0:
        fig = _new_figure(4, 2)
        fig.text(0.5, 0.5, "no test images", ha="center", va="center")
        _save(fig, path)
        return "no test images"
    cols = min(GRID_SIDE, k)
    rows = math.ceil(k / cols)
    titles = []
    for idx in chosen:
        pred, true = int(y_pred[idx]), int(y_true[idx])
        title = (f"pred: {_short(str(class_names[pred]), 16)} ({probs[idx, pred]:.0%})\n"
                 f"true: {_short(str(class_names[true]), 16)}")
        titles.append((title, pred == true))
    longest = max(len(line) for t, _ in titles for line in t.splitlines())
    font = max(7.0, min(10.0, 138 / (0.62 * longest)))  # a title fits its ~2-inch cell
    # Fixed grid (no constrained layout: 25 axes would make it solve for seconds), in inches:
    cell_w, image_h, title_h, top_h = 2.1, 1.95, 0.5, 0.4
    width, height = cols * cell_w + 0.2, rows * (image_h + title_h) + top_h
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.08 / height,
                        top=1 - (top_h + title_h) / height, wspace=0.08,
                        hspace=title_h / image_h)
    for cell, (idx, (title, ok)) in enumerate(zip(chosen, titles)):
        ax = fig.add_subplot(rows, cols, cell + 1)
        img, cmap = _displayable(images[idx])
        if cmap:
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255 if img.dtype == np.uint8 else 1,
                      interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(title, color=GREEN if ok else RED, fontsize=font, pad=4,
                     fontweight="normal" if ok else "bold")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(GREEN if ok else RED)
            spine.set_linewidth(1.5 if ok else 3)
    fig.suptitle(f"Test predictions: {how}", fontsize=10, wrap=True,
                 y=1 - 0.12 / height, va="top")
    _save(fig, path)
    return how[0].upper() + how[1:]


# --------------------------------------------------------------------------- html


_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#0969da;
        --bad:#ffebe9; --badfg:#cf222e; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color:var(--fg); background:#fff; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 64px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:19px; margin:36px 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
.sub { color:var(--muted); margin:0 0 20px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:10px 16px;
        min-width:140px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.card.main .v { font-size:30px; color:var(--accent); }
figure { margin:0 0 8px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.row { display:flex; flex-wrap:wrap; gap:20px; align-items:flex-start; }
.row figure { flex:1 1 460px; }
.row.wide figure { flex-basis:100%; }
table { border-collapse:collapse; font-variant-numeric:tabular-nums; font-size:14px; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:right; }
th { background:var(--bg); font-weight:600; }
th:first-child, td:first-child { text-align:left; }
tr.worst td { background:var(--bad); }
tr.worst td:first-child { color:var(--badfg); font-weight:600; }
tr.avg td { font-weight:600; background:var(--bg); }
td.bar { min-width:120px; }
td.bar span { display:inline-block; height:10px; background:var(--accent); border-radius:2px;
              vertical-align:middle; }
.note { color:var(--muted); font-size:13px; }
pre { background:var(--bg); border:1px solid var(--line); border-radius:6px; padding:12px 14px;
      overflow:auto; font:13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
details summary { cursor:pointer; color:var(--accent); margin:8px 0; }
a { color:var(--accent); }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.{digits}g}"  # 812.5, 41.3
    if size >= 10 ** -(digits - 1) or value == 0:
        return f"{value:.{digits}f}"  # 3.4036, 0.2100, 0.0010: decimals line up in a column
    return f"{value:.2e}"


def worst_classes(per_class: Mapping[str, Mapping[str, Any]], limit: int = 0) -> list[str]:
    """Classes with test images whose F1 is lowest: at most ``limit`` (default: a fifth, 1-5).

    Classes scoring a perfect F1 are never listed.
    """
    scored = [(v["f1"], name) for name, v in per_class.items() if v["support"] > 0 and v["f1"] < 1]
    limit = limit or max(1, min(5, len(per_class) // 5))
    return [name for _, name in sorted(scored, key=lambda t: t[0])[:limit]]


def render_html(metrics: Mapping[str, Any], config: Mapping[str, Any], *,
                predictions_caption: str = "") -> str:
    """The self-contained report page; images are referenced by their file names."""
    cfg = _plain(dict(config))
    model = cfg.get("model") or metrics.get("model")
    data = cfg.get("data") or metrics.get("dataset")
    title = "Evaluation report"
    if model:
        title += f": {model}" + (f" on {data}" if data else "")
    n_classes = len(metrics["class_names"])

    cards = [("Test accuracy", f"{metrics['test_accuracy']:.2%}", "main"),
             ("Test loss", _fmt(metrics.get("test_loss")), ""),
             ("Epochs", _fmt(metrics.get("epochs_completed")), ""),
             ("Test images", _fmt(metrics.get("num_test_images")), ""),
             ("Classes", _fmt(n_classes), ""),
             ("Macro F1", _fmt(metrics["macro_avg"]["f1"], 3), "")]
    card_html = "\n".join(
        f'<div class="card {cls}"><div class="k">{_esc(k)}</div><div class="v">{v}</div></div>'
        for k, v, cls in cards)

    extras = {k: v for k, v in metrics.items() if k not in _CORE_KEYS}
    extra_html = ""
    if extras:
        rows = "\n".join(
            f"<tr><td>{_esc(k)}</td><td>{_fmt(v) if not isinstance(v, (dict, list)) else _esc(json.dumps(v))}</td></tr>"
            for k, v in extras.items())
        extra_html = (f"<h2>Run</h2>\n<table><tr><th>fact</th><th>value</th></tr>\n{rows}\n"
                      "</table>")

    worst = set(worst_classes(metrics["per_class"]))
    class_rows = []
    for name, v in metrics["per_class"].items():
        cls = ' class="worst"' if name in worst else ""
        f1 = v["f1"] if v["support"] else None
        bar = f'<span style="width:{100 * v["f1"]:.0f}px"></span>' if v["support"] else ""
        class_rows.append(
            f"<tr{cls}><td>{_esc(name)}</td><td>{_fmt(v['precision'], 3)}</td>"
            f"<td>{_fmt(v['recall'], 3)}</td><td>{_fmt(f1, 3)}</td><td>{_fmt(v['support'])}</td>"
            f'<td class="bar">{bar}</td></tr>')
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        a = metrics[key]
        class_rows.append(
            f'<tr class="avg"><td>{label}</td><td>{_fmt(a["precision"], 3)}</td>'
            f'<td>{_fmt(a["recall"], 3)}</td><td>{_fmt(a["f1"], 3)}</td>'
            f'<td>{_fmt(metrics.get("num_test_images"))}</td><td></td></tr>')
    absent = [n for n, v in metrics["per_class"].items() if not v["support"]]
    notes = []
    if worst:
        notes.append("Highlighted: the lowest F1 scores (" + ", ".join(_esc(w) for w in
                     sorted(worst, key=lambda w: metrics["per_class"][w]["f1"])) + ").")
    if absent:
        notes.append("No test images for: " + ", ".join(_esc(a) for a in absent) + ".")

    history = metrics.get("history") or {}
    history_html = ""
    if history:
        keys = list(history)
        n_rows = max((len(v) for v in history.values()), default=0)
        head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
        body = "\n".join(
            f"<tr><td>{e + 1}</td>" + "".join(
                f"<td>{_fmt(history[k][e] if e < len(history[k]) else None, 4)}</td>"
                for k in keys) + "</tr>"
            for e in range(n_rows))
        history_html = (f"<details><summary>Per-epoch history ({n_rows} epochs)</summary>\n"
                        f"<table><tr><th>epoch</th>{head}</tr>\n{body}\n</table></details>")

    config_yaml = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False).rstrip()
    annotated = n_classes <= ANNOTATE_MAX_CLASSES
    cm_caption = ("Rows are the true class, columns the predicted class; the diagonal counts "
                  "correct predictions." + ("" if annotated else
                                            " Counts are in metrics.json (too many classes to print)."))

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{_esc(title)}</h1>
<p class="sub">{_fmt(metrics.get("num_test_images"))} test images, {n_classes} classes,
{_fmt(metrics.get("epochs_completed"))} epochs. Raw numbers: <a href="{METRICS_FILE}">{METRICS_FILE}</a>.</p>
<div class="cards">
{card_html}
</div>
{extra_html}

<h2>Learning curves</h2>
<figure><img src="{CURVES_FILE}" alt="accuracy and loss per epoch, train and validation">
<figcaption>Train and validation per epoch; the dashed line is the final test result, the star the best validation epoch.</figcaption></figure>
{history_html}

<h2>Confusion matrix</h2>
<div class="row{' wide' if n_classes > 15 else ''}">
<figure><a href="{CONFUSION_FILE}"><img src="{CONFUSION_FILE}" alt="confusion matrix, counts"></a></figure>
<figure><a href="{CONFUSION_NORMALIZED_FILE}"><img src="{CONFUSION_NORMALIZED_FILE}" alt="confusion matrix normalized by true class"></a></figure>
</div>
<p class="note">{_esc(cm_caption)} The second view divides each row by the class's test images, so its diagonal is the recall. Click an image for full size.</p>

<h2>Per-class results</h2>
<table>
<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th></th></tr>
{chr(10).join(class_rows)}
</table>
<p class="note">{" ".join(notes)}</p>

<h2>Predictions</h2>
<figure><img src="{PREDICTIONS_FILE}" alt="test images with predicted and true labels">
<figcaption>{_esc(predictions_caption)}. Green: predicted correctly; red: misclassified; the percentage is the model's confidence in its prediction.</figcaption></figure>

<h2>Configuration</h2>
<pre>{_esc(config_yaml)}</pre>
</main>
</body>
</html>
"""
