"""SIGTERM in every phase of a run, through the real CLI and the real signal.

``KUBETRAIN_TEST_SIGTERM_IN=PHASE`` makes the trainer send itself SIGTERM just after PHASE
starts. Each case starts from a finished 1-epoch run rerun for 2 epochs (so a good model/ and
report/ exist), is stopped in one phase and must: exit 143 with one line naming the phase,
leave model/ and report/ as they were, and complete when started again, without training the
epoch that was already checkpointed. Training itself is covered by test_training.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from trainer.core.errors import EXIT_PREEMPTED

from .conftest import FAST, run_trainer
from .test_reliability import error_line, snapshot

DIGITS = ["--data", "builtin:digits", *FAST]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """A finished 1-epoch run, then extended to 2 epochs but stopped during its evaluation:
    the checkpoint holds epoch 2, model/ and report/ are still epoch 1's."""
    tmp = tmp_path_factory.mktemp("phases")
    out = tmp / "out"
    assert run_trainer([*DIGITS, "--output", str(out), "--epochs", "1"], tmp).returncode == 0
    proc = run_trainer([*DIGITS, "--output", str(out), "--epochs", "2"], tmp,
                       env={"KUBETRAIN_TEST_SIGTERM_IN": "evaluation"})
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 2
    return out


@pytest.mark.parametrize("phase", ["evaluation", "report", "export", "promotion check", "promotion"])
def test_sigterm_in_a_phase_exits_143_and_the_next_run_resumes(two_epoch_run, tmp_path, phase):
    out = tmp_path / "out"
    shutil.copytree(two_epoch_run, out)
    serving = tmp_path / "serving"
    args = [*DIGITS, "--output", str(out), "--epochs", "2", "--set", f"promote_to={serving}"]
    before = snapshot(out)
    marker = (out / "checkpoints" / "latest.json").read_bytes()

    proc = run_trainer(args, tmp_path, env={"KUBETRAIN_TEST_SIGTERM_IN": phase})
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    line = error_line(proc, "preempted")
    assert f"stopped by SIGTERM during {phase}; nothing was lost" in line
    # What was published before the signal stays, nothing half-done is left in place.
    after = snapshot(out)
    if phase != "promotion":
        assert after == {**before, "config.yaml": after["config.yaml"]}
    else:  # the report and the model were already replaced whole
        assert json.loads(after["report/metrics.json"])["epochs_completed"] == 2
    assert (out / "checkpoints" / "latest.json").read_bytes() == marker
    assert not (serving / "model").exists() or (serving / "model" / "model.keras").exists()

    if phase not in ("export", "promotion"):
        return  # the restart is the same for every phase: checked for two of them
    again = run_trainer(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 2 epochs already trained" in again.stderr
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    assert (serving / "model" / "model.keras").exists()


def test_sigterm_while_loading_data_exits_143(digits_folder, tmp_path):
    out = tmp_path / "out"  # decoding 1,797 PNG files takes about a second: stopped in the middle
    proc = run_trainer(["--data", str(digits_folder), "--output", str(out), *FAST], tmp_path,
                       env={"KUBETRAIN_TEST_SIGTERM_IN": "data loading@0.2"})
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    assert "during data loading" in error_line(proc, "preempted")
    assert not (out / "checkpoints" / "latest.json").exists()


def test_run_log_is_kept_with_the_run_and_checkpoint_time_recorded(two_epoch_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(two_epoch_run, out)
    logs_before = sorted((out / "logs").glob("*.log"))
    assert len(logs_before) == 2  # one per attempt, the stopped one included
    assert "ERROR run ended: Preempted: stopped by SIGTERM during evaluation" in logs_before[-1].read_text()
    proc = run_trainer([*DIGITS, "--output", str(out), "--epochs", "3"], tmp_path,
                       env={"KUBETRAIN_TERMINATION_GRACE_SECONDS": "0.001"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "longer than the pod's 0s termination grace period" in proc.stderr
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    timing = metrics["checkpoint_seconds"]
    assert timing["count"] == 1 and 0 < timing["max"] < 60 and timing["grace_period_seconds"] == 0.001
    log_file = out / metrics["log"]
    assert log_file.parent.name == "logs" and log_file not in logs_before
    assert "epoch 3/3" in log_file.read_text()
