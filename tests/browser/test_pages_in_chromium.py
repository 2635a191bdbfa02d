"""The pages people look at, rendered by a real headless Chromium (Debian's package): the
runs index (`python -m jobs runs`) and each run's report.html it links to. Every image loads,
every link resolves to a file, nothing is wider than the window or hidden in a scrolling box.
Screenshots are kept in test-artifacts/browser/ (git-ignored) for a person to look at.

Chromium missing: skipped on a laptop (with the reason), a failure under CI=true, where
`make test-services` installs it (apt).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from jobs import runs
from tests.browser.chromium import PAGE_CHECK, Browser, find
from trainer.report import build_metrics, write_report
from trainer.training import progress

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
WIDTH = 1280


@pytest.fixture(scope="module")
def browser():
    binary = find()
    if binary is None:
        message = "chromium is not installed (apt-get install chromium; make test-services does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    b = Browser(binary, width=WIDTH)
    yield b
    b.close()


def _run(parent: Path, name: str, seed: int, accuracy: float, promoted: bool, started: str) -> None:
    """A run directory as the trainer leaves it: report/ (real report code), progress.json."""
    rng = np.random.default_rng(seed)
    names = ["cat", "dog", "a-class-with-a-long-name"]
    y = rng.integers(0, 3, 60)
    right = rng.random(60) < accuracy
    y_pred = np.where(right, y, (y + 1) % 3)
    probs = np.full((60, 3), 0.1)
    probs[np.arange(60), y_pred] = 0.8
    history = {"loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8], "val_loss": [0.9, 0.7, 0.5],
               "val_accuracy": [0.55, 0.7, accuracy], "learning_rate": [1e-3] * 3}
    cost = {"device": "gpu", "device_count": 2, "wall_seconds": 4000.0, "train_seconds": 3500.0,
            "gpu_hours": 2.222, "preemptions_survived": 1, "attempts": 2}
    metrics = build_metrics(class_names=names, y_true=y, y_pred=y_pred, test_loss=0.42,
                            history=history, epochs_completed=3,
                            extra={"model": "seed_cnn", "cost": cost,
                                   "promotion": {"promote": promoted, "reason": "test"}})
    images = rng.integers(0, 255, (25, 16, 16, 3), dtype=np.uint8)
    write_report(parent / name / "report", metrics=metrics, images=images, probs=probs[:25],
                 y_true=y[:25], config={"model": "seed_cnn", "data": "builtin:digits", "epochs": 3})
    record = {"format": progress.FORMAT, "state": "finished", "epoch": 3, "epochs": 3, "step": 0,
              "steps_per_epoch": 10, "started": started, "updated": started, "attempt": 2,
              "preemptions": 1, "wall_seconds": 4000.0, "test_accuracy": metrics["test_accuracy"]}
    (parent / name / progress.FILE).write_text(json.dumps(record))


def _check(browser: Browser, page: Path, shot: str) -> dict:
    browser.open(page.as_uri())
    seen = browser.evaluate(PAGE_CHECK)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.screenshot(ARTIFACTS / shot)
    broken = [i["src"] for i in seen["images"] if not i["ok"]]
    assert not broken, f"{page.name}: broken images {broken}"
    missing = [link for link in seen["links"] if urlparse(link).scheme == "file"
               and not Path(unquote(urlparse(link).path)).is_file()]
    assert not missing, f"{page.name}: links to nothing {missing}"
    assert seen["scrollWidth"] <= seen["clientWidth"], f"{page.name} is wider than {WIDTH}px"
    assert not seen["clipped"], f"{page.name}: cut off in {seen['clipped']}"
    assert not seen["outside"], f"{page.name}: outside the window: {seen['outside']}"
    assert (ARTIFACTS / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return seen


def test_runs_index_and_the_reports_it_links(browser, tmp_path):
    parent = tmp_path / "nightly"
    _run(parent, "flowers-nightly-29412180", 1, 0.80, True, "2026-01-01T02:30:00Z")
    _run(parent, "flowers-nightly-29413620", 2, 0.70, False, "2026-01-02T02:30:00Z")
    _run(parent, "flowers-nightly-m1a2b3c", 3, 0.90, True, "2026-01-02T09:00:00Z")
    found = runs.collect(str(parent))
    runs.write_index(str(parent), found)

    index = _check(browser, parent / "index.html", "runs-index.png")
    assert len(index["images"]) == 1 and index["images"][0]["width"] > 300  # the trend plot
    reports = [link for link in index["links"] if link.endswith("/report/report.html")]
    assert len(reports) == 3
    for i, link in enumerate(reports):
        seen = _check(browser, Path(unquote(urlparse(link).path)), f"report-{i}.png")
        assert len(seen["images"]) >= 4, seen["images"]  # curves, confusion x2, predictions
