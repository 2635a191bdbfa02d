"""Fixed costs, measured: phase timings in metrics.json, the report drawn in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from trainer.report.worker import ReportWorker, tiny_job
from trainer.runtime.stopwatch import Stopwatch, process_age_seconds

from .conftest import FAST, REPO

REPORT_FILES = {"metrics.json", "learning_curves.png", "confusion_matrix.png",
                "confusion_matrix_normalized.png", "predictions.png", "report.html"}


def test_phases_count_laps_from_the_process_start():
    assert process_age_seconds() > 0  # this process started before this test
    phases = Stopwatch()
    time.sleep(0.05)
    phases.lap("data")
    phases.add("report", 1.5)
    out = phases.as_dict()
    assert list(out) == ["startup", "data", "report", "total"]
    assert out["data"] >= 0.05 and out["report"] == 1.5
    assert out["total"] >= out["startup"] + out["data"]


def test_report_drawn_in_this_process_when_no_worker_can_start(tmp_path):
    metrics, seconds = ReportWorker(None).submit(tmp_path, tiny_job()).result()
    assert metrics["test_accuracy"] == 0.75 and seconds > 0
    assert REPORT_FILES <= {p.name for p in tmp_path.iterdir()}


def test_report_drawn_by_the_worker_process(tmp_path):
    worker = ReportWorker.start(tmp_path / "scratch")
    try:
        drawing = worker.submit(tmp_path / "report", tiny_job())
        assert type(drawing).__name__ == "_InWorker"  # handed over, not drawn here
        metrics, _ = drawing.result()
    finally:
        worker.close()
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert REPORT_FILES <= {p.name for p in (tmp_path / "report").iterdir()}
    assert not list((tmp_path / "scratch").iterdir())  # job and result files cleaned up


def test_a_worker_that_is_not_needed_is_stopped(tmp_path):
    worker = ReportWorker.start(tmp_path)
    proc = worker._proc
    worker.close()
    assert proc.poll() is not None


def test_a_failing_worker_falls_back_to_drawing_here(tmp_path, monkeypatch):
    worker = ReportWorker.start(tmp_path / "scratch")
    worker._proc.kill()  # dies before it gets the job
    worker._proc.wait()
    metrics, _ = worker.submit(tmp_path / "report", tiny_job()).result()
    assert metrics["test_accuracy"] == 0.75
    assert REPORT_FILES <= {p.name for p in (tmp_path / "report").iterdir()}


def test_a_run_records_its_phases_and_publishes_report_and_model(tmp_path):
    """...and its own process never loads the report's libraries (Keras would, at import)."""
    out = tmp_path / "run"
    args = ["--data", "builtin:digits", "--output", str(out), "--epochs", "1", *FAST]
    code = ("import sys; from trainer.__main__ import main; code = main(sys.argv[1:]); "
            "print('LOADED', sorted(m for m in ('matplotlib', 'sklearn', 'scipy.stats') if m in sys.modules)); "
            "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch")}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    phases = metrics["phase_seconds"]
    assert list(phases) == ["startup", "data", "train", "evaluate", "report", "export", "total"]
    assert all(v > 0 for v in phases.values())
    assert phases["total"] >= phases["startup"] + phases["train"]
    assert REPORT_FILES <= {p.name for p in (out / "report").iterdir()}
    assert (out / "model" / "saved_model").is_dir() and (out / "model" / "model.keras").is_file()
    assert not [p for p in out.iterdir() if "staging" in p.name]  # everything published whole
    assert "phases (s): startup" in proc.stderr
    assert np.isclose(sum(map(sum, metrics["confusion_matrix"])), metrics["num_test_images"])
