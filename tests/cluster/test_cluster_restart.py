"""A kube-apiserver restart under the launcher (#22): `jobs logs -f`, `jobs wait` and
`jobs status` run while the API server is stopped, left down (connection refused) and started
again on the same port and etcd data. They ride it out and end with the Job's own answer: every
log line once, in order; success as success, a failure with its exit code.

The Job is the launcher's rendered Job (examples/kind.yaml) whose container prints numbered
lines for about 40 s and then exits 0 or 3, so the restart falls inside its run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from cluster_helpers import REPO, submit_rendered

pytestmark = pytest.mark.cluster

LINES = 80
SECONDS_PER_LINE = 0.5


def counting(code: int):
    def change(container, job):
        container["command"] = ["python", "-c", (
            "import sys, time\n"
            f"for i in range({LINES}):\n"
            f"    print(f'line {{i}}', flush=True); time.sleep({SECONDS_PER_LINE})\n"
            f"sys.exit({code})")]
        container["args"] = []
        job["spec"]["backoffLimit"] = 0
    return change


def start(launcher, tmp_path, *args: str) -> tuple[subprocess.Popen, object, object]:
    out, err = (tmp_path / f"{args[0]}.out").open("w+"), (tmp_path / f"{args[0]}.err").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "jobs", *args, "--namespace", launcher.namespace],
                            cwd=REPO, env={**os.environ, "KUBECONFIG": str(launcher.kubeconfig)},
                            stdout=out, stderr=err, text=True)
    return proc, out, err


def text(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()


def wait_until(what: str, check, timeout_seconds: float = 120) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.timeout(400)
def test_logs_follow_and_wait_ride_out_a_restart(control_plane, kube, launcher, namespace,
                                                  kubetrain_base, tmp_path):
    name = submit_rendered(kube, namespace, tmp_path / "run", counting(0))
    follower, follow_out, follow_err = start(launcher, tmp_path, "logs", name, "-f")
    waiter, wait_out, wait_err = start(launcher, tmp_path, "wait", name, "--timeout", "300")
    wait_until("the first lines of the log", lambda: "line 3\n" in text(follow_out))

    control_plane.restart_apiserver(down_seconds=5)
    status = launcher("status", name)  # right after the restart: answers
    assert f"job {name} (namespace {namespace}): " in status.stdout, status.stdout

    assert follower.wait(timeout=240) == 0, text(follow_err)
    assert waiter.wait(timeout=240) == 0, text(wait_err)
    lines = text(follow_out).splitlines()
    assert lines == [f"line {i}" for i in range(LINES)], lines  # each line once, in order
    assert f"job {name} succeeded" in text(wait_out)
    assert "cannot reach the API server" in text(follow_err) + text(wait_err)  # it did go down
    assert "Traceback" not in text(follow_err) + text(wait_err)


@pytest.mark.timeout(400)
def test_wait_through_a_restart_reports_the_failure_with_its_code(control_plane, kube, launcher,
                                                                  namespace, kubetrain_base, tmp_path):
    name = submit_rendered(kube, namespace, tmp_path / "run", counting(3))
    waiter, wait_out, wait_err = start(launcher, tmp_path, "wait", name, "--timeout", "300")
    wait_until("the job's pod to run", lambda: "Running" in text(wait_err))
    control_plane.restart_apiserver(down_seconds=5)
    assert waiter.wait(timeout=240) == 1, text(wait_out) + text(wait_err)
    err = text(wait_err)
    assert "PodFailurePolicy" in err and "exit 3 (bad or missing data" in err, err
    assert "cannot reach the API server" in err and "reachable again" in err
    assert "succeeded" not in text(wait_out)
