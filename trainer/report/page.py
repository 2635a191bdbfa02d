"""The report's one HTML page: every number and plot of the run, and its resolved config.

``render_html(metrics, config)`` is a pure function built from one small function per
section (summary, learning curves, confusion matrix, per-class results, predictions,
configuration). The page links the PNGs by relative file name, so the report folder works
when opened from disk or downloaded from a bucket, and needs no network (no external CSS,
fonts or JS).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

import yaml

from trainer.report.files import (
    CONFUSION_FILE,
    CONFUSION_NORMALIZED_FILE,
    CURVES_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from trainer.report.metrics import CORE_KEYS, plain
from trainer.report.plots import ANNOTATE_MAX_CLASSES
from trainer.report.served import log_note, promotion_section

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
    cfg = plain(dict(config))
    title = _title(metrics, cfg)
    sections = (
        _summary_section(metrics, title),
        _curves_section(metrics),
        _confusion_section(len(metrics["class_names"])),
        _classes_section(metrics),
        _predictions_section(predictions_caption),
        promotion_section(metrics),
        _config_section(cfg),
        log_note(metrics),
    )
    body = "\n\n".join(sections)
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
{body}
</main>
</body>
</html>
"""


def _title(metrics: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    model = cfg.get("model") or metrics.get("model")
    data = cfg.get("data") or metrics.get("dataset")
    title = "Evaluation report"
    if model:
        title += f": {model}" + (f" on {data}" if data else "")
    return title


def _summary_section(metrics: Mapping[str, Any], title: str) -> str:
    """Title, one line of context, the headline numbers as cards, and the run's facts."""
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
    return f"""<h1>{_esc(title)}</h1>
<p class="sub">{_fmt(metrics.get("num_test_images"))} test images, {n_classes} classes,
{_fmt(metrics.get("epochs_completed"))} epochs. Raw numbers: <a href="{METRICS_FILE}">{METRICS_FILE}</a>.</p>
<div class="cards">
{card_html}
</div>
{_run_facts(metrics)}"""


def _run_facts(metrics: Mapping[str, Any]) -> str:
    """The facts the trainer added (model, replicas, images/s, ...) as a table, if any."""
    extras = {k: v for k, v in metrics.items() if k not in CORE_KEYS}
    if not extras:
        return ""
    rows = "\n".join(
        f"<tr><td>{_esc(k)}</td><td>{_fmt(v) if not isinstance(v, (dict, list)) else _esc(json.dumps(v))}</td></tr>"
        for k, v in extras.items())
    return f"<h2>Run</h2>\n<table><tr><th>fact</th><th>value</th></tr>\n{rows}\n</table>"


def _curves_section(metrics: Mapping[str, Any]) -> str:
    return f"""<h2>Learning curves</h2>
<figure><img src="{CURVES_FILE}" alt="accuracy and loss per epoch, train and validation">
<figcaption>Train and validation per epoch; the dashed line is the final test result, the star the best validation epoch.</figcaption></figure>
{_history_table(metrics.get("history") or {})}"""


def _history_table(history: Mapping[str, list]) -> str:
    """Every per-epoch value, folded away under a <details>."""
    if not history:
        return ""
    keys = list(history)
    n_rows = max((len(v) for v in history.values()), default=0)
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    body = "\n".join(
        f"<tr><td>{e + 1}</td>" + "".join(
            f"<td>{_fmt(history[k][e] if e < len(history[k]) else None, 4)}</td>"
            for k in keys) + "</tr>"
        for e in range(n_rows))
    return (f"<details><summary>Per-epoch history ({n_rows} epochs)</summary>\n"
            f"<table><tr><th>epoch</th>{head}</tr>\n{body}\n</table></details>")


def _confusion_section(n_classes: int) -> str:
    annotated = n_classes <= ANNOTATE_MAX_CLASSES
    caption = ("Rows are the true class, columns the predicted class; the diagonal counts "
               "correct predictions." + ("" if annotated else
                                         " Counts are in metrics.json (too many classes to print)."))
    return f"""<h2>Confusion matrix</h2>
<div class="row{' wide' if n_classes > 15 else ''}">
<figure><a href="{CONFUSION_FILE}"><img src="{CONFUSION_FILE}" alt="confusion matrix, counts"></a></figure>
<figure><a href="{CONFUSION_NORMALIZED_FILE}"><img src="{CONFUSION_NORMALIZED_FILE}" alt="confusion matrix normalized by true class"></a></figure>
</div>
<p class="note">{_esc(caption)} The second view divides each row by the class's test images, so its diagonal is the recall. Click an image for full size.</p>"""


def _classes_section(metrics: Mapping[str, Any]) -> str:
    """Precision, recall, F1 and support per class and averaged; the worst classes marked."""
    per_class = metrics["per_class"]
    worst = set(worst_classes(per_class))
    rows = []
    for name, v in per_class.items():
        cls = ' class="worst"' if name in worst else ""
        f1 = v["f1"] if v["support"] else None
        bar = f'<span style="width:{100 * v["f1"]:.0f}px"></span>' if v["support"] else ""
        rows.append(
            f"<tr{cls}><td>{_esc(name)}</td><td>{_fmt(v['precision'], 3)}</td>"
            f"<td>{_fmt(v['recall'], 3)}</td><td>{_fmt(f1, 3)}</td><td>{_fmt(v['support'])}</td>"
            f'<td class="bar">{bar}</td></tr>')
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        a = metrics[key]
        rows.append(
            f'<tr class="avg"><td>{label}</td><td>{_fmt(a["precision"], 3)}</td>'
            f'<td>{_fmt(a["recall"], 3)}</td><td>{_fmt(a["f1"], 3)}</td>'
            f'<td>{_fmt(metrics.get("num_test_images"))}</td><td></td></tr>')
    absent = [n for n, v in per_class.items() if not v["support"]]
    notes = []
    if worst:
        notes.append("Highlighted: the lowest F1 scores (" + ", ".join(
            _esc(w) for w in sorted(worst, key=lambda w: per_class[w]["f1"])) + ").")
    if absent:
        notes.append("No test images for: " + ", ".join(_esc(a) for a in absent) + ".")
    return f"""<h2>Per-class results</h2>
<table>
<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th></th></tr>
{chr(10).join(rows)}
</table>
<p class="note">{" ".join(notes)}</p>"""


def _predictions_section(caption: str) -> str:
    return f"""<h2>Predictions</h2>
<figure><img src="{PREDICTIONS_FILE}" alt="test images with predicted and true labels">
<figcaption>{_esc(caption)}. Green: predicted correctly; red: misclassified; the percentage is the model's confidence in its prediction.</figcaption></figure>"""


def _config_section(cfg: Mapping[str, Any]) -> str:
    config_yaml = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False).rstrip()
    return f"<h2>Configuration</h2>\n<pre>{_esc(config_yaml)}</pre>"
