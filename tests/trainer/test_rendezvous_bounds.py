"""A multi-worker process whose peers never come exits within rendezvous_timeout_seconds plus
a stated margin (``multiworker.BACKSTOP_SECONDS``), exit 1, one line (#22): the rendezvous can
block in C++ holding the GIL, where a Python timer never runs (seen waiting for 11 minutes
with a 10 s timeout, deaf to SIGTERM). A TF_CONFIG that cannot work (no ``task`` with several
workers, a port out of range, a foreign shape, deep nesting) is exit 2 before TensorFlow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.runtime import multiworker

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10
ARGS = ["--data", "builtin:digits", "--epochs", "1", "--set", "model=seed_cnn", "--set", "image_size=16",
        "--set", f"rendezvous_timeout_seconds={TIMEOUT}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(tmp_path: Path, tf_config) -> dict[str, str]:
    raw = tf_config if isinstance(tf_config, str) else json.dumps(tf_config)
    return {**os.environ, "KUBETRAIN_SCRATCH": str(tmp_path / "scratch"), "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "TF_CONFIG": raw}


@pytest.mark.timeout(300)
def test_a_peer_nobody_listens_on_ends_the_wait_within_the_bound(tmp_path):
    own, nobody = free_port(), free_port()
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{own}", f"127.0.0.1:{nobody}"]},
                 "task": {"type": "worker", "index": 0}}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *ARGS, "--output", str(tmp_path / "out")],
                            cwd=REPO, env=env(tmp_path, tf_config), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines, waiting_since = [], None
    for line in proc.stderr:  # read as it comes: the wait starts at the "waiting up to" line
        lines.append(line.rstrip("\n"))
        if waiting_since is None and "waiting up to" in line:
            waiting_since = time.monotonic()
    rc = proc.wait(timeout=60)
    waited = time.monotonic() - waiting_since
    assert rc == 1, "\n".join(lines[-20:])
    assert lines[-1].startswith("rendezvous error: not all 2 workers joined within "
                                f"rendezvous_timeout_seconds={TIMEOUT}"), lines[-5:]
    assert sum("rendezvous error" in line for line in lines) == 1  # one line, not one per watchdog
    assert "Traceback" not in "\n".join(lines) and "most recent call first" not in "\n".join(lines)
    assert TIMEOUT - 1 <= waited <= TIMEOUT + multiworker.BACKSTOP_SECONDS + 2, waited


@pytest.mark.parametrize("tf_config, expected", [
    pytest.param({"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}}, "has no 'task'", id="no-task"),
    pytest.param({"cluster": {"worker": ["127.0.0.1:70000", "127.0.0.1:2223"]},
                  "task": {"type": "worker", "index": 0}}, "a port from 1 to 65535", id="own-port-out-of-range"),
    pytest.param({"cluster": {"worker": ["127.0.0.1:0", "127.0.0.1:2223"]},
                  "task": {"type": "worker", "index": 1}}, "a port from 1 to 65535", id="port-0"),
    pytest.param({"cluster": {"worker": [7, 8]}, "task": {"type": "worker", "index": 0}}, "is not valid",
                 id="numbers"),
    pytest.param({"cluster": ["a:1"], "task": {"index": 0}}, "is not valid", id="cluster-a-list"),
    pytest.param("[" * 5000 + "]" * 5000, "is not valid", id="deep-nesting"),
    pytest.param("x" * 70000, "longer than 64 KiB", id="huge"),
])
def test_a_tf_config_that_cannot_work_is_exit_2_in_one_line(tmp_path, tf_config, expected):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trainer", *ARGS, "--output", str(tmp_path / "out")],
                          cwd=REPO, env=env(tmp_path, tf_config), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: TF_CONFIG") and expected in last, last
    assert len(last) < 400
    assert time.monotonic() - start < 60
