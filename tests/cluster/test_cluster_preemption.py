"""Preemption end to end: the pod is evicted mid-training (the API's Eviction, which marks it
DisruptionTarget and deletes it with its grace period); the test kubelet sends SIGTERM; the
real trainer checkpoints and exits 143; the rendered podFailurePolicy ignores it, so even with
backoffLimit 0 the Job starts a new pod, which resumes from the checkpoint and finishes.
"""

import json
import time

import pytest
from cluster_helpers import job_pods, submit_rendered, wait_for
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

EPOCHS = 4


def first_log_line_with(kube, namespace: str, pod: str, text: str, timeout_seconds: int) -> str:
    """Follow the pod's log until a line contains ``text``. A 404 while the test kubelet is
    still registering the container's log (it reports Running first) is retried until the
    deadline."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        stream = watch.Watch().stream(kube.core.read_namespaced_pod_log, name=pod,
                                      namespace=namespace, container="trainer", follow=True,
                                      _request_timeout=max(1.0, deadline - time.monotonic()))
        try:
            for line in stream:
                if text in line:
                    stream.close()
                    return line
        except ApiException as exc:
            if exc.status != 404:
                raise
            time.sleep(0.5)
            continue
        break
    raise AssertionError(f"pod {pod} never logged {text!r}")


@pytest.mark.timeout(300)
def test_evicted_pod_checkpoints_and_the_job_resumes_without_spending_its_budget(
        kube, launcher, namespace, kubetrain_base, tmp_path):
    run = tmp_path / "run"

    def no_budget(container, job):
        container["args"] += ["--epochs", str(EPOCHS), "--model", "resnet_small"]
        job["spec"]["backoffLimit"] = 0  # any counted failure would fail the Job

    name = submit_rendered(kube, namespace, run, no_budget)
    (first,) = wait_for("the first pod to run", kube.core.list_namespaced_pod, namespace,
                        lambda pods: [p for p in pods if p.status.phase == "Running"],
                        label_selector=f"batch.kubernetes.io/job-name={name}")
    pod = first.metadata.name
    first_log_line_with(kube, namespace, pod, f"epoch 1/{EPOCHS}", timeout_seconds=150)

    kube.core.create_namespaced_pod_eviction(pod, namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod, namespace=namespace)))

    result = launcher("wait", name, "--timeout", "200", check=False, timeout_seconds=220)
    assert result.returncode == 0, result.stdout + result.stderr
    pods = job_pods(kube, namespace, name)
    assert pod not in [p.metadata.name for p in pods]  # the evicted pod is gone
    assert len(pods) == 1
    resumed = kube.core.read_namespaced_pod_log(pods[0].metadata.name, namespace)
    assert "resuming from checkpoint" in resumed
    job = kube.batch.read_namespaced_job(name, namespace)
    assert job.status.succeeded == 1 and not job.status.failed
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == EPOCHS
