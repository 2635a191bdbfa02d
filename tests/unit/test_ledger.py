"""The goodput ledger's arithmetic (trainer/training/ledger.py) on a fake clock, over attempts
that end by SIGTERM (checkpointed), SIGKILL (from the last heartbeat) and success, with its file
in a real local run directory; and a foreign or torn ledger file starts afresh."""

from __future__ import annotations

import json

import pytest

from trainer.core.errors import Preempted
from trainer.storage import LocalRunDir
from trainer.training import ledger as ledger_lib
from trainer.training.ledger import FILE, PARTS, Ledger, parse_time

T0 = 1_800_000_000.0  # epoch seconds


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


def attempt(clock: Clock, run_dir, *, age: float, submitted_at: float | None = None) -> Ledger:
    """A new process ``age`` seconds old (its start-up before ``run``) joining the run directory."""
    led = Ledger(submitted_at=submitted_at, process_age=age, clock=clock)
    led.attach(run_dir)
    return led


def assert_adds_up(summary: dict) -> None:
    assert abs(sum(summary[p] for p in PARTS) - summary["total"]) <= 0.01 * summary["total"] + 0.002


def test_one_attempt_from_submission_to_the_end(tmp_path):
    clock, run_dir = Clock(T0 + 30), LocalRunDir(str(tmp_path))
    led = attempt(clock, run_dir, age=2.0, submitted_at=T0)  # started at T0+28: queued 28 s
    clock.tick(3)
    led.enter("training")
    clock.tick(10)
    led.saved()
    clock.tick(10)
    led.saved()
    led.enter("evaluating")
    clock.tick(1)
    led.enter("reporting")
    clock.tick(4)
    s = led.summary()
    assert {p: s[p] for p in PARTS} == {"queued": 28.0, "starting": 5.0, "training": 20.0,
                                        "redone": 0.0, "evaluating": 1.0, "reporting": 4.0}
    assert s["total"] == 58.0 and s["goodput"] == round(20 / 58, 4) and s["attempts"] == 1
    assert (s["since"], s["submitted_at"], s["first_started_at"]) == \
        ("submission", "2027-01-15T08:00:00.000Z", "2027-01-15T08:00:28.000Z")
    led.ended()
    assert json.loads((tmp_path / FILE).read_text())["status"] == "finished"


def test_sigterm_then_sigkill_then_success_moves_lost_training_to_redone(tmp_path):
    clock, run_dir = Clock(T0 + 5), LocalRunDir(str(tmp_path))
    # attempt 1: SIGTERM mid-epoch; the loop saves at the step boundary: nothing lost
    led = attempt(clock, run_dir, age=1.0, submitted_at=T0)
    clock.tick(2)
    led.enter("training")
    clock.tick(12)
    led.saved()
    clock.tick(0.5)  # stopping after the save: not in the checkpoint, so lost
    led.ended(Preempted("stopped by SIGTERM"))
    clock.tick(20)  # the pod ends, the Job is re-queued, a new pod is scheduled
    # attempt 2: SIGKILLed 10 s after its last checkpoint, 7 s after its last heartbeat
    led = attempt(clock, run_dir, age=3.0, submitted_at=T0)
    assert led.attempts == 2
    clock.tick(1)
    led.enter("training")
    clock.tick(5)
    led.saved()
    clock.tick(3)
    led._last_write = float("-inf")
    led.heartbeat()  # the last record: 3 s of training not in a checkpoint
    clock.tick(7)  # killed here: these 7 s are only known as the gap before the next start
    clock.tick(15)
    # attempt 3: resumes from the last checkpoint and finishes
    led = attempt(clock, run_dir, age=2.0, submitted_at=T0)
    clock.tick(1)
    led.enter("training")
    clock.tick(8)
    led.saved()
    led.enter("evaluating")
    clock.tick(1)
    led.enter("reporting")
    clock.tick(2)
    s = led.summary()
    assert s["attempts"] == 3 and s["first_started_at"] == "2027-01-15T08:00:04.000Z"
    assert s["redone"] == pytest.approx(0.5 + 3) and s["training"] == pytest.approx(12 + 5 + 8)
    # queued: submission to start 1 (4 s) + the gaps (20 - 3 s of start-up, 7 + 15 - 2)
    assert s["queued"] == pytest.approx(4 + 17 + 20)
    assert s["starting"] == pytest.approx(3 + 4 + 3)
    assert s["total"] == pytest.approx(clock.t - T0)
    assert_adds_up(s)
    assert s["goodput"] == pytest.approx(25 / s["total"], abs=1e-4)


def test_without_a_submission_time_it_starts_at_the_first_process_start(tmp_path):
    clock, run_dir = Clock(T0), LocalRunDir(str(tmp_path))
    led = attempt(clock, run_dir, age=4.0)
    clock.tick(6)
    led.enter("training")
    clock.tick(10)
    s = led.summary()
    assert (s["since"], s["submitted_at"], s["queued"], s["starting"], s["total"]) == \
        ("first start", None, 0.0, 10.0, 20.0)
    led.ended(RuntimeError("boom"))  # failed: 10 s of training since no checkpoint
    clock.tick(5)
    led = attempt(clock, run_dir, age=1.0, submitted_at=T0 - 100)  # not this run's submission
    s = led.summary()
    assert (s["since"], s["attempts"], s["redone"], s["training"], s["queued"]) == \
        ("first start", 2, 10.0, 0.0, 4.0)
    assert_adds_up(s)


@pytest.mark.parametrize("content", ["", "{torn", "[1, 2]", '{"format": 99}',
                                     '{"format": 1, "parts": {"queued": -1}}',
                                     '{"format": 1, "parts": {"queued": "1e9"}, "origin": 1}'],
                         ids=["empty", "torn", "list", "other-format", "negative", "strings"])
def test_an_unusable_ledger_file_starts_afresh(tmp_path, content, caplog):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / FILE).write_text(content)
    clock = Clock(T0)
    led = attempt(clock, LocalRunDir(str(tmp_path)), age=1.0)
    assert led.attempts == 1 and led.summary()["total"] == 1.0
    assert "starts afresh" in caplog.text or content == ""
    assert json.loads((tmp_path / FILE).read_text())["format"] == ledger_lib.FORMAT


def test_a_huge_or_binary_ledger_file_starts_afresh(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    for content in (b"{" + b" " * (ledger_lib.MAX_BYTES + 1) + b"}", b"\xff\xfe{}"):
        (tmp_path / FILE).write_bytes(content)
        led = attempt(Clock(T0), LocalRunDir(str(tmp_path)), age=1.0)
        assert led.attempts == 1 and "the ledger starts afresh" in caplog.text
        caplog.clear()


def test_a_finished_runs_ledger_or_a_later_submission_starts_a_new_one(tmp_path):
    clock, run_dir = Clock(T0), LocalRunDir(str(tmp_path))
    attempt(clock, run_dir, age=1.0, submitted_at=T0 - 9).ended()
    clock.tick(100)
    assert attempt(clock, run_dir, age=1.0).attempts == 1  # finished: a new ledger
    attempt(clock, run_dir, age=1.0).ended(Preempted("x"))
    clock.tick(50)
    led = attempt(clock, run_dir, age=1.0, submitted_at=clock.t - 10)  # resubmitted since
    assert led.attempts == 1 and led.summary()["queued"] == 9.0


def test_a_ledger_that_cannot_be_written_never_fails_the_run(tmp_path, caplog):
    (tmp_path / "checkpoints").write_text("a file where the directory goes")
    led = attempt(Clock(T0), LocalRunDir(str(tmp_path)), age=1.0)
    led.enter("training")
    led.saved()
    led.ended()
    assert "cannot write checkpoints/ledger.json" in caplog.text


@pytest.mark.parametrize("value, expected", [
    ("1800000000", T0), ("1800000000.5", T0 + 0.5), ("2027-01-15T08:00:00Z", T0),
    ("2027-01-15T09:00:00+01:00", T0), ("2027-01-15T08:00:00.250Z", T0 + 0.25),
    ("", None), ("soon", None), ("nan", None), ("-5", None)])
def test_submission_time_is_epoch_seconds_or_rfc3339(value, expected):
    assert parse_time(value) == expected
