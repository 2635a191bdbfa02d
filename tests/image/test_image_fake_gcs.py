"""The local stand-in of fsouza/fake-gcs-server:1.54.0 runs k8s/overlays/kind's container as the
overlay writes it: its command and args, its user, a read-only root, no capabilities, the
bucket folder mounted read-only where the ConfigMap goes; the bucket "kubetrain" is served."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.image import images

pytestmark = [pytest.mark.image]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake_gcs_image(tmp_path_factory) -> str:
    missing = [tool for tool in images.missing_tools() if tool == "podman"]
    if missing:
        message = "podman not found (bash tests/image/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return images.ensure_fake_gcs_image(log=tmp_path_factory.mktemp("fake-gcs") / "build.log")[0]


def overlay_container() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((REPO / "k8s" / "overlays" / "kind" / "fake-gcs.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_fake_gcs_image_serves_the_overlays_bucket_as_the_overlay_runs_it(fake_gcs_image, tmp_path):
    pod, container = overlay_container()
    assert images.full_name(container["image"]) == fake_gcs_image
    bucket = tmp_path / "kubetrain"
    bucket.mkdir()
    (bucket / "README").write_text("from the ConfigMap\n")
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    name = f"kubetrain-test-gcs-{uuid.uuid4().hex[:8]}"
    mount = container["volumeMounts"][0]["mountPath"]
    cmd = ["podman", "run", "--detach", "--name", name, "--user", user, "--read-only",
           "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
           "--publish", "127.0.0.1::4443", "--volume", f"{bucket}:{mount}:ro",
           "--entrypoint", container["command"][0], fake_gcs_image, *container["args"]]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    try:
        assert started.returncode == 0, started.stderr
        port = subprocess.run(["podman", "port", name, "4443"], capture_output=True, text=True,
                              check=True).stdout.strip().rsplit(":", 1)[-1]
        url = f"http://127.0.0.1:{port}/storage/v1/b/kubetrain/o"
        deadline, listing = time.monotonic() + 30, None
        while listing is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    listing = json.load(response)
            except OSError:
                time.sleep(0.3)
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True,
                              check=False).stderr
        assert listing is not None, logs[-2000:]
        assert [item["name"] for item in listing["items"]] == ["README"]
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True,
                       check=False)
