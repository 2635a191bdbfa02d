"""The trainer end to end against the GCS emulator: data pushed with ``python -m trainer data
push``, trained with ``--data gs://... --output gs://...``, killed with SIGTERM mid-training and
restarted as a new pod would be (empty scratch directory): it resumes from the checkpoint it
uploaded, and the report and model land in the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.core.errors import EXIT_CONFIG, EXIT_DATA, EXIT_PREEMPTED

pytestmark = [pytest.mark.gcs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8  # enough to be killed in the middle: the kill follows the first epoch's checkpoint
SMALL = ["--set", "model=seed_cnn", "--set", "image_size=16"]
CHECKPOINT_DEADLINE_SECONDS = 300.0
REPORT_FILES = ("metrics.json", "learning_curves.png", "confusion_matrix.png", "predictions.png", "report.html")


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", *args]


def pod_env(scratch: Path) -> dict[str, str]:
    """The environment of one pod: its own empty scratch directory, the emulator, no GPU."""
    return {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def wait_for_marker(proc: subprocess.Popen, blob, log_path: Path) -> dict:
    """The checkpoint marker once it records at least one finished epoch (polled, with a deadline)."""
    deadline = time.monotonic() + CHECKPOINT_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainer exited with {proc.returncode} before its first checkpoint:\n"
                        + log_path.read_text()[-3000:])
        if blob.exists():
            marker = json.loads(blob.download_as_bytes())
            if marker["epoch"] >= 1:
                return marker
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no checkpoint in the bucket within {CHECKPOINT_DEADLINE_SECONDS:.0f} s:\n"
                + log_path.read_text()[-3000:])


@pytest.mark.timeout(900)
def test_train_from_bucket_killed_and_resumed_from_its_uploaded_checkpoint(gcs_client, bucket, tmp_path):
    data, out = f"gs://{bucket}/datasets/digits", f"gs://{bucket}/runs/digits-1"
    b = gcs_client.bucket(bucket)

    push = subprocess.run(trainer_cmd("data", "push", "builtin:digits", data), env=pod_env(tmp_path / "laptop"),
                          check=False, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert push.returncode == 0, push.stderr
    assert sum(1 for _ in gcs_client.list_blobs(bucket, prefix="datasets/digits/")) == 1797

    # First pod: killed (SIGTERM, as on preemption) once a checkpoint is in the bucket.
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as log_file:
        proc = subprocess.Popen(
            trainer_cmd("--data", data, "--output", out, "--epochs", str(EPOCHS), *SMALL),
            env=pod_env(tmp_path / "pod1"), stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for_marker(proc, b.blob("runs/digits-1/checkpoints/latest.json"), log1)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == EXIT_PREEMPTED, log1.read_text()[-3000:]
    marker = json.loads(b.blob("runs/digits-1/checkpoints/latest.json").download_as_bytes())
    assert 1 <= marker["epoch"] < EPOCHS
    for name in marker["files"]:
        assert b.blob(f"runs/digits-1/checkpoints/{name}").exists(), name
    assert not b.blob("runs/digits-1/report/metrics.json").exists()  # a killed run reports nothing

    # Second pod, fresh scratch: everything it resumes from comes from the bucket.
    run2 = subprocess.run(
        trainer_cmd("--data", data, "--output", out, "--epochs", str(EPOCHS), *SMALL),
        env=pod_env(tmp_path / "pod2"), check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run2.returncode == 0, run2.stderr[-3000:]
    assert f"resuming from checkpoint {marker['checkpoint']} (epoch {marker['epoch']}" in run2.stderr

    names = {blob.name for blob in gcs_client.list_blobs(bucket, prefix="runs/digits-1/")}
    for f in ("config.yaml", *(f"report/{r}" for r in REPORT_FILES)):
        assert f"runs/digits-1/{f}" in names, f
    assert any(n.startswith("runs/digits-1/model/") for n in names)
    assert not any("/.staging/" in n or ".write-probe" in n for n in names)

    metrics = json.loads(b.blob("runs/digits-1/report/metrics.json").download_as_bytes())
    assert metrics["epochs_completed"] == EPOCHS
    assert all(len(values) == EPOCHS for values in metrics["history"].values())
    assert metrics["resumed_from"], "metrics.json should record the checkpoint the run resumed from"
    assert metrics["test_accuracy"] > 0.3  # digits at 16 px after 8 epochs: well above chance (0.1)
    # the goodput ledger: the first pod's account came back from the bucket, not the scratch
    ledger = metrics["ledger"]
    assert ledger["attempts"] == 2 and ledger["training"] > 0
    assert abs(sum(ledger[p] for p in ("queued", "starting", "training", "redone", "evaluating",
                                       "reporting")) - ledger["total"]) <= 0.01 * ledger["total"]
    state = json.loads(b.blob("runs/digits-1/checkpoints/ledger.json").download_as_bytes())
    assert (state["status"], state["attempts"]) == ("finished", 2)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("data", "env_change", "exit_code", "message"),
    [
        ("gs://no-such-bucket-kt/digits", {}, EXIT_DATA, "bucket 'no-such-bucket-kt' does not exist"),
        ("gs://{bucket}/nothing-here", {}, EXIT_DATA, "no objects under"),
        ("gs://{bucket}/digits", {"STORAGE_EMULATOR_HOST": None, "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
         EXIT_CONFIG, "no Google Cloud credentials"),
    ],
    ids=["missing-bucket", "empty-prefix", "no-credentials"],
)
def test_storage_errors_are_one_line_with_their_exit_code(bucket, tmp_path, data, env_change, exit_code, message):
    env = pod_env(tmp_path / "pod")
    for key, value in env_change.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run(
        trainer_cmd("--data", data.format(bucket=bucket), "--output", f"gs://{bucket}/runs/x", *SMALL),
        env=env, check=False, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert message in last, proc.stderr[-3000:]
