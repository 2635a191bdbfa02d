"""Progress records and the runs index in a bucket (the real client against fake-gcs-server):
`jobs runs gs://...` lists the runs one level down and writes index.html + the trend plot
next to them; `status` reads a run's progress.json from gs://; a missing bucket is one line."""

from __future__ import annotations

import json

import pytest

from jobs import runs, status
from trainer.core.errors import StorageError, TrainerError
from trainer.storage import small_files
from trainer.training import progress

pytestmark = pytest.mark.gcs


def _put_run(parent: str, name: str, accuracy: float, started: str) -> None:
    record = {"format": progress.FORMAT, "state": "finished", "epoch": 2, "epochs": 2, "step": 0,
              "steps_per_epoch": 5, "started": started, "updated": started, "attempt": 1,
              "preemptions": 0, "wall_seconds": 30.0, "test_accuracy": accuracy}
    metrics = {"test_accuracy": accuracy, "epochs_completed": 2, "promotion": {"promote": True},
               "cost": {"device": "cpu", "device_count": 1, "wall_seconds": 30.0,
                        "train_seconds": 20.0, "gpu_hours": 0.0, "preemptions_survived": 0,
                        "attempts": 1}}
    small_files.write_bytes(small_files.join(parent, name, progress.FILE), json.dumps(record).encode())
    small_files.write_bytes(small_files.join(parent, name, "report", "metrics.json"), json.dumps(metrics).encode())
    small_files.write_bytes(small_files.join(parent, name, "report", "report.html"), b"<html></html>")


def test_runs_index_in_a_bucket(gcs_client, bucket):
    parent = f"gs://{bucket}/runs/nightly"
    _put_run(parent, "n-2", 0.95, "2026-01-02T03:00:00Z")
    _put_run(parent, "n-1", 0.93, "2026-01-01T03:00:00Z")
    small_files.write_bytes(small_files.join(parent, "stray.txt"), b"x")  # a file, not a run directory
    found = runs.collect(parent)
    assert [(r.name, r.test_accuracy, r.promoted) for r in found] == [("n-1", 0.93, True),
                                                                      ("n-2", 0.95, True)]
    assert runs.write_index(parent, found) == f"{parent}/index.html"
    page = small_files.read_text(f"{parent}/index.html")
    assert 'href="n-1/report/report.html"' in page and 'src="runs_trend.png"' in page
    png = gcs_client.bucket(bucket).blob("runs/nightly/runs_trend.png")
    assert png.exists() and png.download_as_bytes()[:4] == b"\x89PNG"
    assert small_files.child_dirs(parent) == ["n-1", "n-2"]  # index.html did not become a run


def test_status_reads_progress_from_the_bucket(bucket):
    parent = f"gs://{bucket}/runs"
    _put_run(parent, "job-a", 0.9, "2026-01-01T00:00:00Z")
    record, why = status.read_progress(f"{parent}/job-a")
    assert why == "" and record["test_accuracy"] == 0.9
    record, why = status.read_progress(f"{parent}/job-b")
    assert record is None and why == "no progress record yet"


def test_a_missing_bucket_is_one_line(gcs_client):
    with pytest.raises(TrainerError) as caught:
        runs.collect("gs://no-such-bucket-kubetrain/runs")
    assert "\n" not in str(caught.value)
    record, why = status.read_progress("gs://no-such-bucket-kubetrain/runs/x")
    assert record is None and why
    assert isinstance(caught.value, (StorageError, TrainerError))


def test_jobs_runs_on_a_missing_bucket_or_an_empty_prefix_is_exit_2(bucket, capsys):
    from jobs import cli

    assert cli.main(["runs", "gs://no-such-bucket-kubetrain/runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bucket 'no-such-bucket-kubetrain' does not exist" in err
    assert cli.main(["runs", f"gs://{bucket}/runs/nightyl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no objects under this prefix; check the path" in err
    assert not small_files.exists_under(f"gs://{bucket}/runs")  # nothing was written


def test_jobs_runs_over_a_binary_metrics_file_in_a_bucket(bucket, capsys):
    from jobs import cli

    parent = f"gs://{bucket}/runs"
    _put_run(parent, "good", 0.9, "2026-01-01T00:00:00Z")
    small_files.write_bytes(small_files.join(parent, "bad", "report", "metrics.json"), bytes(range(256)))
    assert cli.main(["runs", parent, "--no-html"]) == 0
    out, err = capsys.readouterr()
    assert "good" in out and "0.9000" in out and "bad" in out
    assert err.startswith("warning: ") and "metrics.json is not UTF-8 text" in err
