"""The goodput ledger on real runs (trainer/training/ledger.py): a run SIGTERMed mid-training
and resumed accounts both attempts and the gap between them in metrics.json, its parts adding
up to its wall time; a submission time 30 s before the start is 30 s queued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.trainer.conftest import FAST, REPO, preempt_trainer, run_trainer
from trainer.training.ledger import FILE, PARTS, parse_state

GAP_SECONDS = 3.0  # between the preempted attempt's exit and the next start: the re-queue


def ledger_of(out) -> dict:
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert {"test_accuracy", "test_loss", "history", "phase_seconds", "cost"} <= set(metrics)
    return metrics["ledger"]


def assert_adds_up(ledger: dict) -> None:
    parts = sum(ledger[p] for p in PARTS)
    assert abs(parts - ledger["total"]) <= 0.01 * ledger["total"], ledger
    # goodput is rounded from the unrounded parts; recomputed from the rounded ones it may differ
    # in its last digit.
    assert ledger["goodput"] == pytest.approx(ledger["training"] / ledger["total"], abs=1.5e-4)


def test_a_preempted_and_resumed_run_accounts_every_second_of_both_attempts(tmp_path):
    out = tmp_path / "out"
    args = ["--data", "builtin:digits", "--output", str(out), "--epochs", "3", *FAST,
            "--set", "steps_per_execution=1"]
    began = time.time()
    preempt_trainer(args, tmp_path, out)
    first = json.loads((out / FILE).read_text())
    assert (first["status"], first["attempts"], first["since"]) == ("preempted", 1, "first start")
    assert first["parts"]["training"] > 0 and first["unsaved_training"] < 1.0  # saved at the SIGTERM
    time.sleep(GAP_SECONDS)

    again = run_trainer(args, tmp_path)
    ended = time.time()
    assert again.returncode == 0, again.stderr[-3000:]
    ledger = ledger_of(out)
    assert_adds_up(ledger)
    assert ledger["attempts"] == 2 and ledger["since"] == "first start" and ledger["submitted_at"] is None
    assert ledger["queued"] >= GAP_SECONDS  # the gap between the attempts
    assert 0 <= ledger["redone"] < 1.0  # a SIGTERM checkpoints at the step boundary: ~nothing lost
    assert ledger["training"] > 0 and ledger["starting"] > 0 and ledger["evaluating"] > 0
    assert ledger["reporting"] > 0
    # the wall time the test saw: from before the first start to after the second exit (which
    # adds the processes' own exit, outside the ledger)
    assert 0.75 * (ended - began) <= ledger["total"] <= ended - began, (ledger, ended - began)
    assert "ledger: queued" in again.stderr and "2 attempt(s)" in again.stderr
    final = json.loads((out / FILE).read_text())
    assert final["status"] == "finished" and final["attempts"] == 2


def test_a_submission_time_before_the_start_is_queued(tmp_path):
    out = tmp_path / "out"
    submitted = time.time() - 30
    proc = run_trainer(["--data", "builtin:digits", "--output", str(out), "--epochs", "1", *FAST,
                        "--set", "export=false"], tmp_path,
                       env={"KUBETRAIN_SUBMITTED_AT": f"{submitted:.3f}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = ledger_of(out)
    assert_adds_up(ledger)
    assert ledger["since"] == "submission" and ledger["attempts"] == 1 and ledger["redone"] == 0
    # the process start is the kernel's, in clock ticks (10 ms): within a few of them
    assert 30 - 0.05 <= ledger["queued"] < 40
    assert ledger["total"] <= time.time() - submitted


def test_a_sigkilled_attempts_recorded_time_is_carried_into_the_next(tmp_path):
    """SIGKILL (no handler runs) once the ledger recorded a checkpoint: the next attempt keeps the
    killed one's training up to that record and counts the rest, to its own start, as queued."""
    out = tmp_path / "out"
    args = ["--data", "builtin:digits", "--output", str(out), "--epochs", "3", *FAST,
            "--set", "steps_per_execution=1"]
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, recorded = time.monotonic() + 240, None
    while time.monotonic() < deadline and proc.poll() is None:
        recorded = parse_state((out / FILE).read_text()) if (out / FILE).exists() else None
        if recorded is not None and recorded["parts"]["training"] > 0:  # a checkpoint's record
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and recorded is not None, stderr[-3000:]
    killed = json.loads((out / FILE).read_text())
    assert killed["status"] == "running"  # nobody wrote its end

    again = run_trainer(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    ledger = ledger_of(out)
    assert_adds_up(ledger)
    assert ledger["attempts"] == 2
    assert ledger["training"] >= killed["parts"]["training"] - killed["unsaved_training"] - 0.01
    assert ledger["redone"] == round(killed["parts"]["redone"] + killed["unsaved_training"], 3)
    assert ledger["queued"] >= killed["parts"]["queued"]
