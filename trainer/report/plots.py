"""The report's plots: learning curves, confusion matrices and the predictions grid (PNG).

Drawn with ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no GUI backend, no
global state). matplotlib is imported on first use (it costs a second at start-up, and
``import trainer.report`` stays light), after pointing ``MPLCONFIGDIR`` at a temporary
directory when the home directory is not writable (a pod with a read-only root filesystem
and a user absent from ``/etc/passwd``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRID_SIDE = 5  # the predictions grid is at most GRID_SIDE x GRID_SIDE images
ANNOTATE_MAX_CLASSES = 30  # above this many classes the confusion matrix shows colours only
DPI = 100
GREEN = "#1a7f37"
RED = "#cf222e"


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
    fig = _new_figure(11, 4.2)
    panels = (
        ("Accuracy", ("accuracy", "sparse_categorical_accuracy"),
         ("val_accuracy", "val_sparse_categorical_accuracy"), test_accuracy, "upper"),
        ("Loss", ("loss",), ("val_loss",), test_loss, "lower"),
    )
    n_epochs = 0
    for i, (title, train_keys, val_keys, test_value, better) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        n_epochs = max(n_epochs, _curves_panel(ax, history, title, train_keys, val_keys,
                                               test_value, better))
    if n_epochs:
        for ax in fig.axes:
            ax.set_xlim(0.5, n_epochs + 0.5)
    fig.suptitle(f"Learning curves ({n_epochs} epoch{'s' if n_epochs != 1 else ''})",
                 fontsize=13)
    _save(fig, path)


def _curves_panel(ax: Any, history: Mapping[str, Sequence[Any]], title: str,
                  train_keys: tuple[str, ...], val_keys: tuple[str, ...],
                  test_value: float | None, better: str) -> int:
    """One panel: train and validation per epoch, the best validation epoch starred, the test
    result dashed. ``better`` is "upper" (accuracy) or "lower" (loss). Returns the epochs drawn."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    drawn = False
    n_epochs = 0
    for label, keys, color in (("train", train_keys, "#1f77b4"), ("validation", val_keys, "#ff7f0e")):
        values = _series(history, *keys)
        if values is None:
            continue
        epochs = np.arange(1, len(values) + 1)
        n_epochs = max(n_epochs, len(values))
        ax.plot(epochs, values, "-", marker="o", markersize=4, color=color, label=label)
        drawn = True
        if label == "validation" and np.isfinite(values).any():
            pick = np.nanargmax if better == "upper" else np.nanargmin
            best = int(pick(values))
            ax.plot(best + 1, values[best], marker="*", markersize=13, color=color,
                    linestyle="none", label=f"best val: epoch {best + 1}")
    if test_value is not None and math.isfinite(test_value):
        ax.axhline(test_value, color="#555555", linestyle="--", linewidth=1,
                   label=f"test: {test_value:.3f}" if title == "Loss" else f"test: {test_value:.1%}")
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
    return n_epochs


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
    tick_size = 10 if n <= 15 else 8 if n <= 30 else 7 if n <= 60 else 5
    label_room = 0.5 + max(len(s) for s in labels) * tick_size * 0.55 / 72  # inches for the tick labels
    side = max(n * cell, 3.0)
    width, height = side + label_room + 2.0, side + label_room + 1.2
    # No constrained layout: with a square axes and long rotated labels it can leave the title
    # outside the figure. Fixed margins, then a tight bounding box when saving.
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=label_room / width, right=1 - 0.3 / width,
                        bottom=label_room / height, top=1 - 0.8 / height)
    ax = fig.add_subplot(1, 1, 1)
    norm = Normalize(vmin=0.0, vmax=vmax)
    im = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, pad=0.02, shrink=0.9 if n <= 15 else 0.5, aspect=25)
    cbar.set_label("share of the true class" if normalize else "test images")
    if n <= ANNOTATE_MAX_CLASSES:
        chars = 4 if normalize else len(str(int(values.max())))
        font = max(6.0, min(11.0, side / n * 72 * 0.8 / (0.62 * max(chars, 2))))
        _annotate_cells(ax, im.cmap(norm(values)), values, normalize, font)
    _label_classes(ax, labels, tick_size)
    ax.set_title(_confusion_title(cm, normalize), fontsize=12)
    _save(fig, path, tight=True)


def _annotate_cells(ax: Any, colors: np.ndarray, values: np.ndarray, normalize: bool,
                    font: float) -> None:
    """Each cell's count (or share) in a colour readable on the cell's own colour."""
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


def _label_classes(ax: Any, labels: list[str], tick_size: float) -> None:
    """Class names on both axes (rotated as their length needs), thin lines between cells."""
    n = len(labels)
    longest = max(len(s) for s in labels)
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


def _confusion_title(cm: np.ndarray, normalize: bool) -> str:
    total = int(cm.sum())
    correct = int(np.trace(cm))
    title = ("Confusion matrix, normalized by true class" if normalize
             else "Confusion matrix (test images)")
    subtitle = f"{correct} of {total} correct ({correct / total:.1%})" if total else "no test images"
    if len(cm) > ANNOTATE_MAX_CLASSES:
        subtitle += "; see metrics.json for counts"
    return f"{title}\n{subtitle}"


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
        _draw_example(fig.add_subplot(rows, cols, cell + 1), images[idx], title, ok, font)
    fig.suptitle(f"Test predictions: {how}", fontsize=10, wrap=True,
                 y=1 - 0.12 / height, va="top")
    _save(fig, path)
    return how[0].upper() + how[1:]


def _draw_example(ax: Any, image: np.ndarray, title: str, ok: bool, font: float) -> None:
    """One test image, its title and frame green (right) or red and bold (wrong)."""
    img, cmap = _displayable(image)
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
