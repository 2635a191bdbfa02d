"""The report's "vs the served model" section (nightly promotion) and the link to the run's log.

Pure functions of ``metrics.json``: the promotion decision with its reason, which images the
two models were compared on, McNemar's test, per-class recall deltas, and the difference of the
two confusion matrices (new minus served: more on the diagonal and less off it is better).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def log_note(metrics: Mapping[str, Any]) -> str:
    """A link to this attempt's log, kept under ``<output>/logs/`` (next to ``report/``)."""
    rel = metrics.get("log")
    if not rel:
        return ""
    return (f'<p class="note">Log of the attempt that wrote this report: '
            f'<a href="../{_esc(rel)}">{_esc(rel)}</a> (every attempt\'s log is in '
            f'<a href="../logs/">logs/</a>).</p>')


def promotion_section(metrics: Mapping[str, Any]) -> str:
    p = metrics.get("promotion")
    if not p:
        return ""
    verdict = "promoted" if p.get("promote") else "not promoted: the served model stays"
    target = f" ({_esc(p['target'])})" if p.get("target") else ""
    head = (f"<h2>vs the served model</h2>\n<p><b>{_esc(verdict)}</b>{target}: "
            f"{_esc(p.get('reason', ''))}.</p>")
    comparison = p.get("comparison") or {}
    if not comparison:
        return head
    fair = comparison.get("fair")
    note = (f'<p class="note">{"" if fair else "<b>Unverified comparison.</b> "}'
            f"{_esc(comparison.get('note', ''))}; image set {_esc(comparison.get('fingerprint') or '')}.</p>")
    t = p.get("mcnemar") or {}
    stats = (
        "<table><tr><th>compared images</th><th>served accuracy</th><th>new accuracy</th>"
        "<th>only served right</th><th>only new right</th><th>McNemar p</th><th>alpha</th></tr>"
        f"<tr><td>{comparison.get('num_images', '')}</td><td>{_num(p.get('current_accuracy'))}</td>"
        f"<td>{_num(p.get('new_accuracy'))}</td><td>{t.get('only_served_right', '')}</td>"
        f"<td>{t.get('only_new_right', '')}</td><td>{_num(t.get('p_value'), 3)}</td>"
        f"<td>{_num(t.get('alpha'), 3)}</td></tr></table>")
    return "\n".join([head, note, stats, _recall_table(p), _difference_matrix(p, metrics)])


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "\u2013"
    return f"{value:.{digits}g}" if digits == 3 else f"{value:.{digits}f}"


def _recall_table(p: Mapping[str, Any]) -> str:
    per_class = p.get("per_class") or {}
    if not per_class:
        return ""
    limit = p.get("max_recall_drop")
    rows = []
    for name, v in per_class.items():
        bad = limit is not None and v["delta"] < -limit - 1e-12
        cls = ' class="worst"' if bad else ""
        rows.append(f"<tr{cls}><td>{_esc(name)}</td>"
                    f"<td>{v['served_recall']:.3f}</td><td>{v['new_recall']:.3f}</td>"
                    f"<td>{v['delta']:+.3f}</td><td>{v['support']}</td></tr>")
    return ("<h3>Recall per class</h3>\n<table><tr><th>class</th><th>served</th><th>new</th>"
            "<th>change</th><th>images</th></tr>\n" + "\n".join(rows) + "\n</table>\n"
            f'<p class="note">Highlighted: a drop of more than {_esc(limit)} (blocks promotion).</p>')


def _difference_matrix(p: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    matrices = p.get("confusion_matrices") or {}
    new, old = matrices.get("new"), matrices.get("served")
    names = metrics.get("class_names") or []
    if not new or not old or len(names) > 30:
        return ""
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            d = new[i][j] - old[i][j]
            good = (d > 0) == (i == j)
            style = "" if d == 0 else f' style="background:{"#dafbe1" if good else "#ffebe9"}"'
            cells.append(f"<td{style}>{d:+d}</td>" if d else "<td>0</td>")
        rows.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    return ("<h3>Confusion matrix, new minus served</h3>\n"
            f"<table><tr><th>true \\ predicted</th>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n"
            '<p class="note">Rows are the true class. Green: the new model is better there (more '
            "correct on the diagonal, fewer mistakes off it); red: worse. Both matrices are in "
            "metrics.json under promotion.confusion_matrices.</p>")
