"""``python -m jobs runs URI``: the runs under one parent directory (a nightly CronJob's
``train.output``, local or ``gs://``), compared: start, duration, test accuracy, promoted or
not, goodput (``metrics.json``'s ``ledger``: productive training / wall time; ``-`` for a run
still going or one from before the ledger), cost; and ``URI/index.html``, a page with the same table linking each run's report and a
trend plot of accuracy per run (``URI/runs_trend.png``), promoted runs marked.

A run directory is recognised by its ``progress.json`` or ``report/metrics.json`` (written by
the trainer); anything else under the parent is skipped. Links are relative
(``RUN/report/report.html``), so the page works wherever the directory is served or copied.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from trainer.core.errors import ConfigError
from trainer.core.quoting import brief
from trainer.storage import small_files
from trainer.storage.uri import is_remote
from trainer.training import progress

log = logging.getLogger(__name__)

INDEX = "index.html"
TREND = "runs_trend.png"
METRICS = "report/metrics.json"
REPORT = "report/report.html"
SKIPPED = "skipped.json"  # a run that ended before training: nothing new (trainer.run)


@dataclass(frozen=True)
class Run:
    name: str
    uri: str
    state: str  # finished, training, evaluating, preempted, failed, skipped, unknown
    started: str | None  # UTC ISO 8601
    duration_seconds: float | None
    test_accuracy: float | None
    promoted: bool | None  # None: the run had no promote_to
    epochs: int | None
    device: str | None
    device_count: int | None
    gpu_hours: float | None
    attempts: int | None
    preemptions_survived: int | None
    has_report: bool
    goodput: float | None = None  # training / wall seconds (metrics.json ledger)
    problems: tuple[str, ...] = ()  # files or fields of this run that could not be used
    promoted_to: str | None = None  # its promote_to, whose history jobs runs shows (jobs.history)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def unreadable(cls, name: str, uri: str, problems: list[str]) -> Run:
        return cls(name=name, uri=uri, state="unknown", started=None, duration_seconds=None,
                   test_accuracy=None, promoted=None, epochs=None, device=None, device_count=None,
                   gpu_hours=None, attempts=None, preemptions_survived=None, has_report=False,
                   problems=tuple(problems))


def _read_json(uri: str, problems: list[str]) -> dict | None:
    """The JSON object in the file at ``uri``, or None (absent; or unusable: then a problem is
    noted and the run is shown without it)."""
    try:
        text = small_files.read_text(uri)
    except small_files.Unreadable as exc:
        problems.append(f"{uri} {exc}; shown without it")
        return None
    value = small_files.json_object(text)
    if text and value is None:
        problems.append(f"{uri} is not a JSON object; shown without it")
    return value


def _typed(record: dict, key: str, kind: type | tuple, where: str, problems: list[str]):
    """``record[key]`` when it has the type ``kind`` (a bool is not a number); None otherwise,
    with a problem noted when it was there with the wrong type."""
    value = record.get(key)
    if value is None:
        return None
    numeric = kind in (int, float) or kind == (int, float)
    if isinstance(value, kind) and not (numeric and isinstance(value, bool)):
        return value
    problems.append(f"{where}: key {brief(key)} has a wrong type ({brief(value)}); shown as -")
    return None


def read_run(parent: str, name: str) -> Run | None:
    """The run in ``parent/name``, or None when it holds no trainer run. Fields of the wrong type
    and unreadable files are left out and listed in ``problems``, never fatal: one bad run does
    not hide the others."""
    uri = small_files.join(parent, name)
    problems: list[str] = []
    metrics_uri, progress_uri = small_files.join(uri, METRICS), small_files.join(uri, progress.FILE)
    metrics = _read_json(metrics_uri, problems)
    record = _read_json(progress_uri, problems)
    record = record if record is not None and record.get("format") == progress.FORMAT else None
    if metrics is None and record is None:
        skipped = _read_json(small_files.join(uri, SKIPPED), problems)
        if skipped is not None and skipped.get("state") == "skipped":  # nothing new that night
            return replace(
                Run.unreadable(name, uri, problems), state="skipped",
                started=_typed(skipped, "when", str, small_files.join(uri, SKIPPED), problems),
                promoted=False, promoted_to=_typed(skipped, "promote_to", str, uri, problems))
        return Run.unreadable(name, uri, problems) if problems else None
    record = record or {}
    metrics = metrics or {}
    number = (int, float)
    m = lambda key, kind: _typed(metrics, key, kind, metrics_uri, problems)
    p = lambda key, kind: _typed(record, key, kind, progress_uri, problems)
    cost = m("cost", dict) or {}
    ledger = m("ledger", dict) or {}
    c = lambda key, kind: _typed(cost, key, kind, metrics_uri + " cost", problems)
    promotion = m("promotion", dict)
    state = p("state", str) or ("finished" if metrics else "unknown")
    if metrics and state != "finished":
        state = "finished" if record.get("state") in (None, "evaluating") else state
    promote = _typed(promotion, "promote", bool, metrics_uri + " promotion", problems) if promotion else None
    return Run(
        name=name, uri=uri, state=state,
        started=p("started", str),
        duration_seconds=c("wall_seconds", number) or p("wall_seconds", number),
        test_accuracy=m("test_accuracy", number),
        promoted=None if promotion is None else bool(promote),
        epochs=m("epochs_completed", int) or p("epoch", int),
        device=c("device", str) or m("device", str),
        device_count=c("device_count", int) or m("replicas", int),
        gpu_hours=c("gpu_hours", number),
        attempts=c("attempts", int) or p("attempt", int),
        preemptions_survived=c("preemptions_survived", int) if "preemptions_survived" in cost
        else p("preemptions", int),
        has_report=bool(metrics),
        goodput=_typed(ledger, "goodput", number, metrics_uri + " ledger", problems),
        problems=tuple(problems),
        promoted_to=_typed(promotion, "target", str, metrics_uri + " promotion", problems) if promotion else None,
    )


def collect(parent: str) -> list[Run]:
    """Every run under ``parent``, oldest first (by start time, then name). A ``parent`` that is
    not there (a typo), is a file or cannot be listed is a ConfigError: nothing is created."""
    if not is_remote(parent):
        root = Path(parent).expanduser()
        if not root.exists():
            raise ConfigError(f"{brief(parent)}: no such directory; check the path (nothing written)")
        if not root.is_dir():
            raise ConfigError(f"{brief(parent)} is a file, not a directory of runs")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(f"{brief(parent)}: cannot list the directory: permission denied")
    names = small_files.child_dirs(parent, not_found_flag="jobs runs")
    if not names:
        if is_remote(parent) and not small_files.exists_under(parent):
            raise ConfigError(f"{brief(parent)}: no objects under this prefix; check the path "
                              "(nothing written)")
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        found = [r for r in pool.map(lambda n: read_run(parent, n), names) if r is not None]
    return sorted(found, key=lambda r: (r.started or "9999", r.name))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _when(started: str | None) -> str:
    """'2026-01-02 03:00' for '2026-01-02T03:00:00Z'."""
    return started.replace("T", " ")[:16] if started else "-"


def _acc(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _promoted(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _goodput(value: float | None) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "-"


def rows(runs: list[Run], wide: bool = False) -> list[list[str]]:
    header = ["RUN", "STARTED", "DURATION", "STATE", "TEST ACC", "PROMOTED", "GOODPUT"]
    if wide:
        header += ["EPOCHS", "DEVICE", "GPU-HOURS", "ATTEMPTS", "PREEMPTIONS", "URI"]
    out = [header]
    for r in runs:
        row = [r.name, r.started or "-", _duration(r.duration_seconds), r.state,
               _acc(r.test_accuracy), _promoted(r.promoted), _goodput(r.goodput)]
        if wide:
            row += [str(r.epochs or "-"), f"{r.device_count or ''} {r.device or '-'}".strip(),
                    "-" if r.gpu_hours is None else f"{r.gpu_hours:.3f}", str(r.attempts or "-"),
                    "-" if r.preemptions_survived is None else str(r.preemptions_survived), r.uri]
        out.append(row)
    return out


def trend_png(runs: list[Run]) -> bytes | None:
    """Test accuracy per run (oldest left), promoted runs marked; None with no finished run."""
    points = [(i, r) for i, r in enumerate(runs) if isinstance(r.test_accuracy, (int, float))]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.5 * len(runs) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    xs = [i for i, _ in points]
    ys = [r.test_accuracy for _, r in points]
    ax.plot(xs, ys, "-o", color="#4a7bd0", label="test accuracy", zorder=2)
    promoted = [(i, r.test_accuracy) for i, r in points if r.promoted]
    if promoted:
        ax.scatter([p[0] for p in promoted], [p[1] for p in promoted], s=160, marker="*",
                   color="#2e9d4f", zorder=3, label="promoted")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r.name if len(r.name) <= 30 else "…" + r.name[-29:] for r in runs],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per run")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def render_index(parent: str, runs: list[Run], with_trend: bool,
                 now: dt.datetime | None = None) -> str:
    """The self-contained index page (links and the plot are relative)."""
    esc = html.escape
    now = now or dt.datetime.now(dt.timezone.utc)
    body_rows = []
    for r in runs:
        name = (f'<a href="{esc(r.name)}/{REPORT}">{esc(r.name)}</a>' if r.has_report
                else esc(r.name))
        promoted = {None: "-", True: '<span class="yes">yes</span>', False: "no"}[r.promoted]
        body_rows.append(
            f"<tr><td>{name}</td><td>{esc(_when(r.started))}</td>"
            f"<td>{_duration(r.duration_seconds)}</td><td>{esc(r.state)}</td>"
            f'<td class="num">{_acc(r.test_accuracy)}</td><td>{promoted}</td>'
            f'<td class="num">{_goodput(r.goodput)}</td>'
            f'<td class="num">{esc(str(r.epochs or "-"))}</td>'
            f"<td>{esc(f'{r.device_count or 1} x {r.device}' if r.device else '-')}</td>"
            f'<td class="num">{"-" if r.gpu_hours is None else f"{r.gpu_hours:.3f}"}</td>'
            f'<td class="num">{esc(str(r.attempts or "-"))}</td></tr>')
    table = "\n".join(body_rows) or '<tr><td colspan="11">no runs yet</td></tr>'
    trend = (f'<figure><img src="{TREND}" alt="Test accuracy per run, promoted runs marked">'
             "<figcaption>Test accuracy per run, oldest left; a star marks a promoted run."
             "</figcaption></figure>") if with_trend else "<p>No finished run yet: no trend.</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Runs: {esc(parent)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; overflow-wrap: anywhere; }}
.wrap {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; }}
td {{ white-space: nowrap; }}
th {{ background: #f3f5f8; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.yes {{ color: #2e7d32; font-weight: 600; }}
img {{ max-width: 100%; height: auto; }}
figcaption, .muted {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<h1>Runs under {esc(parent)}</h1>
<p class="muted">{len(runs)} run(s); written {now.strftime('%Y-%m-%d %H:%M UTC')} by
<code>python -m jobs runs</code>. Each name links to the run's report.</p>
{trend}
<div class="wrap"><table>
<tr><th>run</th><th>started (UTC)</th><th>duration</th><th>state</th><th>test accuracy</th>
<th>promoted</th><th title="productive training / wall time, over every attempt">goodput</th><th>epochs</th><th>devices</th><th>GPU-hours</th><th>attempts</th></tr>
{table}
</table></div>
</body>
</html>
"""


def write_index(parent: str, runs: list[Run]) -> str:
    """Write ``index.html`` (and the trend plot) into ``parent``; returns the index's URI. A
    local directory that cannot be written is a ConfigError naming ``--no-html``."""
    png = trend_png(runs)
    index = small_files.join(parent, INDEX)
    try:
        if png is not None:
            small_files.write_bytes(small_files.join(parent, TREND), png, "image/png")
        small_files.write_bytes(index, render_index(parent, runs, png is not None).encode(),
                                "text/html; charset=utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {brief(index)}: {exc.strerror or exc}; "
                          "use --no-html to only print the table") from None
    return index
