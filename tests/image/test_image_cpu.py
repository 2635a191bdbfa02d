"""The CPU image (docker/Dockerfile.cpu) built here and run as a cluster runs it: uid 10001, a
read-only root with no tmpfs anywhere, only /scratch writable, every capability dropped,
no-new-privileges, no network. Built from the local stand-in of its public base
(tests/image/standin_base.sh) and reused while its inputs are unchanged (tests/image/images.py).

Select with ``pytest -m image``; without podman/mmdebstrap the tests are skipped with the reason,
unless CI=true, where that is a failure (``make test-services`` installs them as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.image import images

pytestmark = [pytest.mark.image, pytest.mark.slow]

RUN_AS = 10001  # the pods' runAsUser (jobs/render.py) and the image's USER
REPORT_FILES = ("metrics.json", "learning_curves.png", "confusion_matrix.png", "predictions.png",
                "report.html")
PODMAN_MOUNTS = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv",
                 "/scratch"}
FAST = ["--set", "image_size=16", "--set", "model=seed_cnn", "--set", "batch_size=32"]


@pytest.fixture(scope="session")
def cpu_image(tmp_path_factory) -> str:
    missing = images.missing_tools()
    if missing:
        message = f"{', '.join(missing)} not found (bash tests/image/setup.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("image") / "build.log"
    image, _built = images.ensure_trainer_image("cpu", log=log)
    return image


def scratch_dir(tmp_path: Path) -> Path:
    """A host directory for /scratch, owned by the container's user as an emptyDir would be."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chown(scratch, RUN_AS, RUN_AS)
    scratch.chmod(0o700)
    return scratch


def run_args(name: str, scratch: Path) -> list[str]:
    return ["podman", "run", "--name", name, "--user", f"{RUN_AS}:{RUN_AS}",
            "--read-only", "--read-only-tmpfs=false",  # like readOnlyRootFilesystem: no /tmp either
            "--cap-drop=ALL", "--security-opt", "no-new-privileges", "--network", "none",
            "--volume", f"{scratch}:/scratch:rw"]


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def container_name():
    name = f"kubetrain-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--time", "0", name)


def run_trainer(image: str, name: str, scratch: Path, args: list[str], timeout: float = 600):
    podman("rm", "--force", "--time", "0", name)
    proc = subprocess.run([*run_args(name, scratch), image, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc


def test_image_trains_digits_as_uid_10001_on_a_read_only_root(cpu_image, tmp_path, container_name):
    scratch = scratch_dir(tmp_path)
    proc = run_trainer(cpu_image, container_name, scratch,
                       ["--data", "builtin:digits", "--output", "/scratch/run", "--epochs", "2"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "epoch 2/2" in proc.stderr

    run = scratch / "run"
    assert (run / "config.yaml").read_text().startswith("data: builtin:digits")
    assert (run / "checkpoints" / "latest.json").exists()
    assert any((run / "model").iterdir())
    info = json.loads((run / "model" / "model_info.json").read_text())
    assert info["class_names"] == [str(i) for i in range(10)]
    for name in REPORT_FILES:
        assert (run / "report" / name).stat().st_size > 1000, name
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert 0.8 < metrics["test_accuracy"] <= 1.0 and metrics["epochs_completed"] == 2
    assert (run / "config.yaml").stat().st_uid == RUN_AS  # written by the image's user, not root

    # Nothing was written anywhere but /scratch: the root filesystem is unchanged except for the
    # mount points podman itself adds (/etc/hosts, /etc/resolv.conf, ... show up as "C /etc").
    diff = podman("diff", container_name)
    assert diff.returncode == 0, diff.stderr
    changed = [line for line in diff.stdout.splitlines() if line.split()[-1] not in PODMAN_MOUNTS]
    assert changed == [], diff.stdout


def test_sigterm_to_the_containers_main_process_checkpoints_exits_143_and_resumes(
        cpu_image, tmp_path, container_name):
    scratch = scratch_dir(tmp_path)
    args = ["--data", "builtin:digits", "--output", "/scratch/run", "--epochs", "6", *FAST,
            "--set", "steps_per_execution=1"]
    podman("rm", "--force", "--time", "0", container_name)
    started = subprocess.run([*run_args(container_name, scratch), "--detach", cpu_image, *args],
                             capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    marker = scratch / "run" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Running}}", container_name).stdout.strip()
        assert state == "true", podman("logs", container_name).stderr[-4000:]
        time.sleep(0.2)
    assert marker.exists(), "no checkpoint within 300 s"

    # The trainer is the container's PID 1 (exec-form ENTRYPOINT, no shell): it gets the signal
    # itself, as when the kubelet stops the container of an evicted pod.
    pid1 = podman("top", container_name, "pid", "args").stdout.splitlines()
    assert any(line.split(None, 1)[0] == "1" and "-m trainer" in line for line in pid1[1:]), pid1
    killed = podman("kill", "--signal", "TERM", container_name)
    assert killed.returncode == 0, killed.stderr
    waited = podman("wait", container_name, timeout=180)
    logs = podman("logs", container_name).stderr
    assert waited.stdout.strip() == "143", logs[-4000:]
    assert "preempted: stopped by SIGTERM: saved checkpoint" in logs
    saved = json.loads(marker.read_text())
    assert not (scratch / "run" / "report").exists()

    again = run_trainer(cpu_image, container_name, scratch, args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (f"resuming from checkpoint {saved['checkpoint']} (epoch {saved['epoch']}, step {saved['step']})"
            in again.stderr)
    metrics = json.loads((scratch / "run" / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 6 and len(metrics["history"]["loss"]) == 6
