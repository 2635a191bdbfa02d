"""The trainer's own image (docker/Dockerfile.cpu) on the real node, with the manifests
`render` writes, unchanged: examples/kind.yaml to Complete, eviction mid-training, an OOM kill,
and the real kubectl's view of the Job. Data and output go to the kind overlay's in-cluster
object store (fake-gcs-server in a pod), reached by its Service name through CoreDNS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import node
import pytest
import yaml
from cluster_helpers import REPO, job_pods, wait_for
from kubernetes import client, watch
from test_real_node import get_json

from jobs.render import render
from jobs.spec import load_spec

pytestmark = [
    pytest.mark.cluster, pytest.mark.slow,
    # ~15 min with the image's import: `make test-e2e`, not `make test` (kept under 20 min)
    pytest.mark.skipif(os.environ.get("KUBETRAIN_E2E") != "1",
                       reason="the trainer's image on the real node is `make test-e2e` (KUBETRAIN_E2E=1)"),
]

KIND = REPO / "examples" / "kind.yaml"
REPORT_FILES = ("config.yaml", "report/metrics.json", "report/learning_curves.png",
                "report/confusion_matrix.png", "report/predictions.png", "report/report.html")


def jobs(kubeconfig: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m jobs ARGS` as a user runs it (no namespace flag: the spec's, kubetrain)."""
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)})


def kubectl(kubeconfig: Path, *args: str) -> str:
    binary = Path(sys.executable).with_name("kubectl")
    proc = subprocess.run([str(binary), f"--kubeconfig={kubeconfig}", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def spec_file(tmp_path: Path, **changes) -> Path:
    """examples/kind.yaml with top-level keys changed (and `train:` keys under `train`)."""
    spec = yaml.safe_load(KIND.read_text())
    spec["train"].update(changes.pop("train", {}))
    spec.update(changes)
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Store:
    """The in-cluster object store, read from the host through its Service's ClusterIP."""

    def __init__(self, api, namespace: str):
        service = client.CoreV1Api(api).read_namespaced_service("fake-gcs", namespace)
        self.base = f"http://{service.spec.cluster_ip}:4443"

    def names(self, prefix: str) -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = get_json(f"{self.base}/storage/v1/b/kubetrain/o?{query}", timeout_seconds=30)
        return [item["name"] for item in listing.get("items", [])]

    def json(self, name: str) -> dict:
        quoted = urllib.parse.quote(name, safe="")
        return get_json(f"{self.base}/download/storage/v1/b/kubetrain/o/{quoted}?alt=media",
                        timeout_seconds=30)


class PodRecorder(threading.Thread):
    """Watches a Job's pods and keeps each one's last terminated state, so a pod's exit code
    is known even after the API dropped the pod."""

    def __init__(self, core, namespace: str, job: str):
        super().__init__(daemon=True)
        self.core, self.namespace, self.job = core, namespace, job
        self.exits: dict[str, client.V1ContainerStateTerminated] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            stream = watch.Watch().stream(
                self.core.list_namespaced_pod, self.namespace, timeout_seconds=5,
                label_selector=f"batch.kubernetes.io/job-name={self.job}")
            for event in stream:
                for status in event["object"].status.container_statuses or []:
                    if status.state.terminated:
                        self.exits[event["object"].metadata.name] = status.state.terminated


def rendered(namespace: str, path: Path = KIND) -> tuple[dict, dict]:
    config_map, job = render(load_spec(path, []), namespace)
    return config_map, job


@pytest.mark.timeout(900)
def test_the_kind_example_runs_to_complete_in_the_trainer_image(
        real_node, trainer_image, kind_namespace):
    kubeconfig = real_node.plane.kubeconfig
    submitted = jobs(kubeconfig, "submit", str(KIND))
    assert submitted.returncode == 0, submitted.stderr
    try:
        followed = jobs(kubeconfig, "logs", "digits-kind", "-n", kind_namespace, "-f")
        assert followed.returncode == 0, followed.stderr
        assert "epoch 3/3" in followed.stdout, followed.stdout  # streamed through the kubelet
        assert jobs(kubeconfig, "wait", "digits-kind", "-n", kind_namespace,
                    "--timeout", "300").returncode == 0
        core = client.CoreV1Api(real_node.api)
        (pod,) = core.list_namespaced_pod(
            kind_namespace, label_selector="batch.kubernetes.io/job-name=digits-kind").items
        (status,) = pod.status.container_statuses
        assert status.container_id.startswith("containerd://")
        assert status.image == trainer_image
        assert status.state.terminated.exit_code == 0

        _, job = rendered(kind_namespace)
        want = job["spec"]["template"]["spec"]
        got = real_node.api.sanitize_for_serialization(pod.spec)
        assert got["securityContext"] == want["securityContext"]
        assert got["containers"][0]["securityContext"] == want["containers"][0]["securityContext"]
        assert got["containers"][0]["resources"] == want["containers"][0]["resources"]

        store = Store(real_node.api, kind_namespace)
        names = store.names("runs/digits-kind/")
        for wanted in REPORT_FILES:
            assert f"runs/digits-kind/{wanted}" in names, names
        assert any(n.startswith("runs/digits-kind/model/") for n in names)
        assert any(n.startswith("runs/digits-kind/checkpoints/") for n in names)
        metrics = store.json("runs/digits-kind/report/metrics.json")
        assert metrics["epochs_completed"] == 3
        assert metrics["test_accuracy"] > 0.5
        assert {"test_loss", "class_names", "confusion_matrix", "per_class", "history"} <= set(metrics)

        # The real kubectl sees what the launcher reports.
        seen = json.loads(kubectl(kubeconfig, "get", "job", "digits-kind", "-n", kind_namespace,
                                  "-o", "json"))
        reported = json.loads(jobs(kubeconfig, "status", "digits-kind", "-n", kind_namespace,
                                   "-o", "json").stdout)
        assert seen["metadata"]["labels"] == reported["labels"]
        assert seen["metadata"].get("annotations", {}) == reported["annotations"]
        assert job["metadata"]["labels"].items() <= seen["metadata"]["labels"].items()
        assert (job["metadata"].get("annotations") or {}).items() \
            <= seen["metadata"].get("annotations", {}).items()
        assert [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in seen["status"]["conditions"]] == reported["conditions"]
        assert {"type": "Complete", "status": "True"}.items() <= seen["status"]["conditions"][-1].items()
        assert reported["state"] == "Succeeded"
    finally:
        jobs(kubeconfig, "delete", "digits-kind", "-n", kind_namespace)


@pytest.mark.timeout(900)
def test_a_pod_deleted_mid_training_exits_143_and_the_job_resumes_every_epoch_once(
        real_node, trainer_image, kind_namespace, tmp_path):
    epochs = 8
    spec = spec_file(tmp_path, name="digits-evict", backoff_limit=0,
                     train={"epochs": epochs, "output": "gs://kubetrain/runs/digits-evict"})
    kubeconfig = real_node.plane.kubeconfig
    core = client.CoreV1Api(real_node.api)
    recorder = PodRecorder(core, kind_namespace, "digits-evict")
    recorder.start()
    assert jobs(kubeconfig, "submit", str(spec)).returncode == 0
    try:
        (first,) = wait_for("the first pod to log its first epoch", core.list_namespaced_pod,
                            kind_namespace, lambda pods: [p for p in pods if p.status.phase == "Running"
                                                          and "epoch 2/" in _log(core, p)],
                            timeout_seconds=400,
                            label_selector="batch.kubernetes.io/job-name=digits-evict")
        grace = rendered(kind_namespace, spec)[1]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        core.delete_namespaced_pod(first.metadata.name, kind_namespace,
                                   grace_period_seconds=grace)  # as `kubectl delete pod` does
        waited = jobs(kubeconfig, "wait", "digits-evict", "-n", kind_namespace, "--timeout", "600")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert recorder.exits[first.metadata.name].exit_code == 143  # SIGTERM, checkpointed
        pods = job_pods(real_node_kube(real_node), kind_namespace, "digits-evict")
        assert [p.metadata.name for p in pods] != [first.metadata.name]
        job = client.BatchV1Api(real_node.api).read_namespaced_job("digits-evict", kind_namespace)
        assert job.status.succeeded == 1 and not job.status.failed  # backoffLimit 0 not spent
        resumed = core.read_namespaced_pod_log(pods[-1].metadata.name, kind_namespace)
        assert "resuming from checkpoint" in resumed
        assert "epoch 1/" not in resumed  # the second pod started after the checkpointed epochs
        metrics = Store(real_node.api, kind_namespace).json("runs/digits-evict/report/metrics.json")
        assert metrics["epochs_completed"] == epochs
        assert all(len(values) == epochs for values in metrics["history"].values())
    finally:
        recorder.stop.set()
        jobs(kubeconfig, "delete", "digits-evict", "-n", kind_namespace)


@pytest.mark.timeout(600)
def test_a_memory_limit_far_too_small_is_an_oom_kill_that_status_and_wait_explain(
        real_node, trainer_image, kind_namespace, tmp_path):
    spec = spec_file(tmp_path, name="digits-oom", memory="160Mi", shm_size="16Mi", backoff_limit=0,
                     train={"output": "gs://kubetrain/runs/digits-oom"})
    kubeconfig = real_node.plane.kubeconfig
    assert jobs(kubeconfig, "submit", str(spec)).returncode == 0
    try:
        waited = jobs(kubeconfig, "wait", "digits-oom", "-n", kind_namespace, "--timeout", "300")
        assert waited.returncode == 1, waited.stdout + waited.stderr
        said = waited.stdout + waited.stderr
        assert "exit 137 (out of memory (limit 160Mi): raise 'memory' in the spec)" in said, said
        core = client.CoreV1Api(real_node.api)
        (pod,) = core.list_namespaced_pod(
            kind_namespace, label_selector="batch.kubernetes.io/job-name=digits-oom").items
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")  # the kubelet's
        shown = jobs(kubeconfig, "status", "digits-oom", "-n", kind_namespace).stdout
        assert "out of memory (limit 160Mi): raise 'memory' in the spec" in shown, shown
    finally:
        jobs(kubeconfig, "delete", "digits-oom", "-n", kind_namespace)


def _log(core, pod) -> str:
    try:
        return core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace)
    except client.exceptions.ApiException:
        return ""


def real_node_kube(real_node):
    from cluster_helpers import Kube

    api = real_node.api
    return Kube(api, client.CoreV1Api(api), client.BatchV1Api(api),
                client.RbacAuthorizationV1Api(api))


def test_node_images_are_the_ones_the_manifests_name(real_node, trainer_image):
    listed = node.ctr(real_node.plane.state_dir, "images", "ls", "-q").stdout.split()
    assert trainer_image in listed
    assert node.FAKE_GCS_IMAGE in listed  # k8s/overlays/kind/fake-gcs.yaml's image
    assert node.PAUSE_IMAGE in listed
