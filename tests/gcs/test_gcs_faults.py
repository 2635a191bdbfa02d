"""The storage client through the fault proxy (tests/gcs/fault_proxy.py) in front of the real
emulator (#22): each transient fault (503 and 429 with and without Retry-After, a reset before
or after the emulator handled the request, a stall longer than the request timeout, a
truncated body) is retried, counted, and the call completes with the right bytes; a permanent
one (a bucket that disappears, 403, a 503 that never ends) is one line within the bound."""

from __future__ import annotations

import time

import pytest
from fault_proxy import Fault

from trainer.core.errors import ConfigError, StorageError, TrainerError
from trainer.storage import gcs, small_files

pytestmark = pytest.mark.gcs

TRANSIENT = [
    pytest.param(Fault("status", status=503), id="503"),
    pytest.param(Fault("status", status=503, retry_after=1), id="503-retry-after"),
    pytest.param(Fault("status", status=429), id="429"),
    pytest.param(Fault("status", status=429, retry_after=2), id="429-retry-after"),
    pytest.param(Fault("reset"), id="reset"),
    pytest.param(Fault("reset", after=True), id="reset-after-handled"),
    pytest.param(Fault("stall", seconds=4), id="stall"),
    pytest.param(Fault("truncate"), id="truncated-body"),
]


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(gcs, "REQUEST_TIMEOUT_SECONDS", 1.5)


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_transient_fault_is_retried_and_counted(fault, fault_proxy, bucket, short_timeout):
    uri = f"gs://{bucket}/runs/a/progress.json"
    payload = b'{"epoch": 1}' * 1000
    for method in ("POST", "GET"):  # an upload, then a download (metadata and media)
        fault_proxy.clear()
        fault_proxy.add(fault, method=method, times=2)
        before, start = gcs.retries(), time.monotonic()
        if method == "POST":
            small_files.write_bytes(uri, payload)
        else:
            assert small_files.read_text(uri) == payload.decode()
        assert gcs.retries() - before >= 2, (method, fault)
        assert time.monotonic() - start < 60
    assert fault_proxy.injected[fault.kind] == 4


def test_a_fifth_of_requests_failing_still_moves_every_file(fault_proxy, bucket, short_timeout):
    fault_proxy.add(Fault("status", status=503), rate=0.1, seed=1)
    fault_proxy.add(Fault("reset"), rate=0.1, seed=2)
    before = gcs.retries()
    for i in range(30):
        small_files.write_bytes(f"gs://{bucket}/f/{i}.txt", f"file {i}".encode())
    assert [small_files.read_text(f"gs://{bucket}/f/{i}.txt") for i in range(30)] == [
        f"file {i}" for i in range(30)]
    assert sum(fault_proxy.injected.values()) > 0
    assert gcs.retries() - before == sum(fault_proxy.injected.values())


def test_a_bucket_that_disappears_is_one_line(fault_proxy, bucket):
    small_files.write_bytes(f"gs://{bucket}/runs/a/x.txt", b"x")
    fault_proxy.add(Fault("gone"), bucket=bucket)
    with pytest.raises(TrainerError) as caught:
        small_files.write_bytes(f"gs://{bucket}/runs/a/y.txt", b"y")
    assert "\n" not in str(caught.value) and "not found" in str(caught.value)
    with pytest.raises(ConfigError, match=f"bucket '{bucket}' does not exist"):
        small_files.child_dirs(f"gs://{bucket}/runs", not_found_flag="jobs runs")


def test_permission_denied_is_exit_2_at_once(fault_proxy, bucket):
    fault_proxy.add(Fault("status", status=403))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="permission denied") as caught:
        small_files.write_bytes(f"gs://{bucket}/x.txt", b"x")
    assert caught.value.exit_code == 2 and time.monotonic() - start < 5
    assert fault_proxy.injected["status"] == 1  # not retried


def test_an_outage_that_never_ends_fails_within_the_retry_bound(fault_proxy, bucket, monkeypatch):
    monkeypatch.setattr(gcs, "RETRY", gcs.RETRY.with_timeout(6))
    fault_proxy.add(Fault("status", status=503))
    start = time.monotonic()
    with pytest.raises(StorageError, match="failed after retries") as caught:
        small_files.write_bytes(f"gs://{bucket}/x.txt", b"x")
    assert caught.value.exit_code == 1 and "\n" not in str(caught.value)
    assert time.monotonic() - start < 6 + 32 + 5  # the deadline, one backoff step, a request
