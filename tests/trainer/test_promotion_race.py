"""Two runs promoting to one target at once: one promotes, the other compares against it, both
are on record, and the served model and report are always one run's (trainer.promotions)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import promotions
from trainer.storage import LocalRunDir

from .conftest import FAST, REPO, run_trainer


def _create_at_once(args) -> bool:
    root, barrier, i = args
    barrier.wait()
    return LocalRunDir(root).create("promotion.lock", f"process {i}".encode())


def test_one_of_many_processes_creates_the_file(tmp_path):
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(8)
        with multiprocessing.get_context("spawn").Pool(8) as pool:
            won = pool.map(_create_at_once, [(str(tmp_path), barrier, i) for i in range(8)])
    assert sum(won) == 1
    assert (tmp_path / "promotion.lock").read_text() == f"process {won.index(True)}"
    assert [p.name for p in tmp_path.iterdir()] == ["promotion.lock"]  # no temporary left behind


def test_delete_if_leaves_a_file_that_changed(tmp_path):
    run_dir = LocalRunDir(str(tmp_path))
    assert run_dir.create("lock", b"a") and not run_dir.create("lock", b"b")
    assert not run_dir.delete_if("lock", b"b")
    assert run_dir.read("lock") == b"a"
    assert run_dir.delete_if("lock", b"a") and run_dir.read("lock") is None
    assert not run_dir.delete_if("lock", b"a")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_held_lock_is_waited_for_then_given_up(tmp_path):
    target = LocalRunDir(str(tmp_path))
    clock = FakeClock()
    first = promotions.acquire(target, "T", "run-a", 60, clock=clock, sleep=clock.sleep)
    assert first.held
    second = promotions.acquire(target, "T", "run-b", 60, clock=clock, sleep=clock.sleep)
    assert not second.held and second.waited_seconds == pytest.approx(60)
    assert "(run 'run-a', job -)" in second.busy and "waited 60 s" in second.busy
    promotions.release(first)
    third = promotions.acquire(target, "T", "run-c", 60, clock=clock, sleep=clock.sleep)
    assert third.held and third.waited_seconds == 0


def test_a_stale_or_foreign_lock_is_broken(tmp_path):
    target = LocalRunDir(str(tmp_path))
    clock = FakeClock()
    dead = promotions.acquire(target, "T", "run-killed", 0, clock=clock, sleep=clock.sleep)
    clock.now += promotions.STALE_SECONDS + 1
    taker = promotions.acquire(target, "T", "run-b", 0, clock=clock, sleep=clock.sleep)
    assert taker.held and not dead.still_held()
    promotions.release(dead)  # the dead holder's late release leaves the new lock alone
    assert taker.still_held()
    promotions.release(taker)
    (tmp_path / "promotion.lock").write_bytes(b"\xff not json")
    assert promotions.acquire(target, "T", "run-c", 0, clock=clock, sleep=clock.sleep).held


def test_history_entries_are_new_files_read_back_with_problems_left_out(tmp_path):
    target = LocalRunDir(str(tmp_path))
    turn = promotions.acquire(target, str(tmp_path), "run-a", 0)
    names = [promotions.record(turn, {"decision": "promoted", "i": i}) for i in range(3)]
    assert len(set(names)) == 3
    (tmp_path / "history" / "zzz-broken.json").write_text("[1, 2]")
    entries, problems = promotions.read_history(str(tmp_path))
    assert [e["i"] for e in entries] == [0, 1, 2]
    assert entries[0]["run"] == "run-a" and entries[0]["format"] == promotions.HISTORY_FORMAT
    assert len(problems) == 1 and "zzz-broken.json is not a JSON object" in problems[0]


def _start(args: list[str], tmp_path: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / f"scratch-{name}"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_two_runs_released_at_once_promote_one_model(tmp_path):
    """Both runs finish while a third holds the lock; it lets go and both race for it: the
    winner promotes, the other compares against the winner's model (the same recipe: not
    significantly better) and is not promoted; both decisions are in the history and the
    served model and report are the winner's."""
    serving = tmp_path / "serving"
    gate = promotions.acquire(LocalRunDir(str(serving)), str(serving), "the test", 0)
    procs = {name: _start(["--data", "builtin:digits", "--output", str(tmp_path / name), "--epochs", "2",
                           *FAST, "--set", f"promote_to={serving}"], tmp_path, name)
             for name in ("a", "b")}
    logs = {name: tmp_path / name / "logs" for name in procs}
    deadline = time.monotonic() + 400
    waiting = set()
    while waiting != set(procs) and time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            if any("waiting up to" in p.read_text(errors="replace") for p in logs[name].glob("*")):
                waiting.add(name)
        time.sleep(0.5)
    assert waiting == set(procs), "the runs never reached the promotion lock"
    promotions.release(gate)
    for proc in procs.values():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]

    entries, problems = promotions.read_history(str(serving))
    assert not problems and len(entries) == 2
    winner, loser = entries
    assert winner["decision"] == "promoted" and winner["reason"] == "no model there yet"
    assert loser["decision"] == "not promoted"
    assert {winner["run"], loser["run"]} == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert loser["fingerprints"]["served_model"] == winner["fingerprints"]["new_model"]
    assert loser["statistic"]["p_value"] >= loser["statistic"]["alpha"]
    # The served model and report are both the winner's, whole.
    assert promotions.sha256_of(serving / "model" / "model.keras") == winner["fingerprints"]["new_model"]
    assert json.loads((serving / "report" / "metrics.json").read_text())["output"] == winner["run"]
    assert not (serving / "promotion.lock").exists()
    for name in procs:
        metrics = json.loads((tmp_path / name / "report" / "metrics.json").read_text())
        assert metrics["promotion"]["waited_for_lock_seconds"] > 0

    # jobs runs shows the history of the target its runs promote to, and of the target itself.
    for where in (tmp_path, serving):
        shown = subprocess.run([sys.executable, "-m", "jobs", "runs", str(where), "--no-html"], cwd=REPO,
                               capture_output=True, text=True, timeout=60, check=True).stdout
        history = shown.split(f"promotions to {serving} (the last 2, oldest first):")[1].strip().splitlines()
        assert history[0].split()[:3] == ["WHEN", "RUN", "DECISION"]
        assert Path(winner["run"]).name in history[1] and " promoted " in history[1]
        assert Path(loser["run"]).name in history[2] and "not promoted" in history[2]


def test_a_run_that_cannot_get_the_lock_is_not_promoted_and_says_who_held_it(tmp_path):
    serving = tmp_path / "serving"
    gate = promotions.acquire(LocalRunDir(str(serving)), str(serving), "the nightly run", 0)
    proc = run_trainer(["--data", "builtin:digits", "--output", str(tmp_path / "o"), "--epochs", "1",
                        *FAST, "--set", f"promote_to={serving}", "--set", "promotion_wait_seconds=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    promotion = json.loads((tmp_path / "o" / "report" / "metrics.json").read_text())["promotion"]
    assert promotion["promote"] is False
    assert "(run 'the nightly run'" in promotion["reason"] and "promotion_wait_seconds" in promotion["reason"]
    assert promotion["waited_for_lock_seconds"] >= 3
    assert not (serving / "model").exists()
    entries, _ = promotions.read_history(str(serving))
    assert [e["decision"] for e in entries] == ["not promoted"]
    assert gate.still_held()  # the other run's lock is left alone
