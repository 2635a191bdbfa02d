"""The promotion lock and history in a bucket (trainer.promotions over GCSRunDir): a write
conditional on the object not existing lets one of many writers in, a conditional delete only
removes the generation that was read, and a stale lock is broken without touching a newer one."""

from __future__ import annotations

import threading

from trainer import promotions
from trainer.storage.gcs_rundir import GCSRunDir


def test_one_of_many_writers_creates_the_object(bucket, tmp_path):
    uri = f"gs://{bucket}/serving"
    dirs = [GCSRunDir(uri, tmp_path / f"s{i}", recover=False) for i in range(8)]
    barrier = threading.Barrier(len(dirs))
    won: dict[int, bool] = {}

    def create(i: int) -> None:
        barrier.wait()
        won[i] = dirs[i].create("promotion.lock", f"writer {i}".encode())

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(dirs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, ok in won.items() if ok]
    assert len(winners) == 1
    assert dirs[0].read("promotion.lock") == f"writer {winners[0]}".encode()


def test_delete_if_removes_only_what_was_read(bucket, tmp_path):
    run_dir = GCSRunDir(f"gs://{bucket}/serving", tmp_path, recover=False)
    assert run_dir.create("lock", b"a")
    assert not run_dir.delete_if("lock", b"b")
    assert run_dir.delete_if("lock", b"a") and run_dir.read("lock") is None
    assert not run_dir.delete_if("lock", b"a")


def test_stale_lock_broken_and_history_read_back_from_the_bucket(bucket, tmp_path):
    uri = f"gs://{bucket}/serving"
    target = GCSRunDir(uri, tmp_path, recover=False)
    now = [1_000_000.0]
    dead = promotions.acquire(target, uri, "run-killed", 0, clock=lambda: now[0])
    now[0] += promotions.STALE_SECONDS + 1
    taker = promotions.acquire(target, uri, "run-b", 0, clock=lambda: now[0])
    assert taker.held and not dead.still_held()
    promotions.release(dead)
    assert taker.still_held()
    promotions.record(taker, {"decision": "promoted", "reason": "no model there yet"})
    promotions.release(taker)
    assert target.read(promotions.LOCK) is None
    entries, problems = promotions.read_history(uri)
    assert not problems and [(e["run"], e["decision"]) for e in entries] == [("run-b", "promoted")]
