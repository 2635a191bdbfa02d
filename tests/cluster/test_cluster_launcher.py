"""The launcher's whole loop against the real control plane, with only the RBAC Role that
k8s/base ships: submit, logs -f, wait, status, list, delete. The Job runs the real trainer
(digits, one epoch) as a local process and writes its report to a local directory.
"""

import datetime as dt
import json

import pytest
from cluster_helpers import REPO, Launcher, job_pods, token_kubeconfig, wait_for

pytestmark = pytest.mark.cluster

KIND = REPO / "examples" / "kind.yaml"
NAME = "digits-kind"


@pytest.fixture
def as_launcher_sa(control_plane, kube, namespace, kubetrain_base, tmp_path) -> Launcher:
    """`python -m jobs` authenticated as the kubetrain-launcher ServiceAccount, which holds
    k8s/base's Role and nothing else."""
    path = token_kubeconfig(control_plane, kube, namespace, "kubetrain-launcher",
                            tmp_path / "launcher.kubeconfig")
    return Launcher(path, namespace)


@pytest.mark.timeout(300)
def test_submit_follow_wait_status_list_delete(as_launcher_sa, kube, namespace, tmp_path):
    run = tmp_path / "run"
    jobs = as_launcher_sa
    out = jobs("submit", str(KIND), "--set", "data=builtin:digits", "--set", f"output={run}",
               "--set", "epochs=1")
    assert f"job.batch/{NAME} created in namespace {namespace}" in out.stdout
    again = jobs("submit", str(KIND), "--set", "data=builtin:digits", "--set", f"output={run}",
                 "--set", "epochs=1")
    assert "unchanged" in again.stdout  # idempotent

    logs = jobs("logs", NAME, "-f", timeout_seconds=240)
    assert "test accuracy" in logs.stdout, logs.stdout + logs.stderr

    waited = jobs("wait", NAME, "--timeout", "60")
    assert f"job {NAME} succeeded" in waited.stdout

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1
    assert len(metrics["class_names"]) == 10
    # submit stamped the Job (KUBETRAIN_SUBMITTED_AT): the ledger counts from the submission,
    # so the queue, scheduling and the pod's start are in it
    ledger = metrics["ledger"]
    assert (ledger["since"], ledger["attempts"]) == ("submission", 1) and ledger["queued"] > 0
    parts = sum(ledger[p] for p in ("queued", "starting", "training", "redone", "evaluating", "reporting"))
    assert abs(parts - ledger["total"]) <= 0.01 * ledger["total"]
    created = kube.batch.read_namespaced_job(NAME, namespace).metadata.creation_timestamp
    assert abs(created.timestamp() - dt.datetime.fromisoformat(
        ledger["submitted_at"].replace("Z", "+00:00")).timestamp()) < 5

    status = jobs("status", NAME)
    assert f"job {NAME} (namespace {namespace}): Succeeded" in status.stdout
    assert "node kubetrain-node" in status.stdout

    listed = jobs("list")
    assert any(line.split()[:3] == ["job", NAME, "Succeeded"]
               for line in listed.stdout.splitlines()), listed.stdout

    assert "test accuracy" in jobs("logs", NAME).stdout  # a finished pod's log, not followed

    jobs("delete", NAME)
    wait_for("the job's pods to be deleted with it", kube.core.list_namespaced_pod, namespace,
             lambda pods: not pods, label_selector=f"batch.kubernetes.io/job-name={NAME}")
    assert not kube.batch.list_namespaced_job(namespace).items
    assert not job_pods(kube, namespace, NAME)
    gone = jobs("status", NAME, check=False)
    assert gone.returncode == 1 and "no job or cronjob" in gone.stderr


def test_the_role_is_all_it_has(as_launcher_sa, namespace):
    # Secrets are outside the launcher's Role: the cluster must say so.
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api = config.new_client_from_config(config_file=str(as_launcher_sa.kubeconfig))
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).list_namespaced_secret(namespace)
    assert caught.value.status == 403
