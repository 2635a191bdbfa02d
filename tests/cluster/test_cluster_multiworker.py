"""Multi-worker training on the real control plane: a ``workers: 2`` spec becomes an Indexed Job
and a headless Service; the Job controller starts both pods with their completion index; the
test kubelet runs them as local processes (pod names -> 127.0.0.1 ports, see kubelet.py) and
the two trainers train one model under MultiWorkerMirroredStrategy.

The launcher runs as k8s/base's kubetrain-launcher ServiceAccount (RBAC: services get/create/
delete). The fault test evicts worker 1 mid-training with ``backoff_limit: 0``: every worker
stops at the same step, worker 0 checkpoints, the pods exit 143 and 75 (both ``Ignore``), the
Job re-creates both, they resume, and the history holds every epoch once.
"""

import json
import time

import pytest
import yaml
from cluster_helpers import REPO, Launcher, job_pods, token_kubeconfig, wait_for
from kubernetes import client

pytestmark = pytest.mark.cluster

NAME = "digits-mw"
INDEX = "batch.kubernetes.io/job-completion-index"


def _spec_file(tmp_path, **changes) -> str:
    spec = yaml.safe_load((REPO / "examples" / "kind.yaml").read_text())
    spec.update(name=NAME, workers=2, **changes)
    path = tmp_path / "multiworker.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _train(run, epochs: int) -> list[str]:
    values = {"data": "builtin:digits", "output": str(run), "epochs": epochs, "model": "seed_cnn",
              "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.05, "export": False,
              "steps_per_execution": 1}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture
def as_launcher_sa(control_plane, kube, namespace, kubetrain_base, tmp_path) -> Launcher:
    path = token_kubeconfig(control_plane, kube, namespace, "kubetrain-launcher",
                            tmp_path / "launcher.kubeconfig")
    return Launcher(path, namespace)


def _index(pod) -> int:
    return int(pod.metadata.annotations[INDEX])


@pytest.mark.timeout(420)
def test_two_workers_train_one_model(as_launcher_sa, kube, namespace, tmp_path):
    run = tmp_path / "run"
    jobs = as_launcher_sa
    out = jobs("submit", _spec_file(tmp_path), *_train(run, epochs=3))
    assert f"job.batch/{NAME} created" in out.stdout
    svc = kube.core.read_namespaced_service(NAME, namespace)
    assert svc.spec.cluster_ip == "None" and svc.metadata.owner_references[0].kind == "Job"

    waited = jobs("wait", NAME, "--timeout", "360", timeout_seconds=380)
    assert f"job {NAME} succeeded" in waited.stdout, waited.stdout + waited.stderr

    pods = job_pods(kube, namespace, NAME)
    assert sorted(_index(p) for p in pods) == [0, 1]
    assert all(p.status.phase == "Succeeded" for p in pods)
    assert {p.spec.hostname for p in pods} == {f"{NAME}-0", f"{NAME}-1"}
    assert {p.spec.subdomain for p in pods} == {NAME}

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["replicas"] == 2
    assert metrics["epochs_completed"] == 3
    assert metrics["test_accuracy"] > 0.9
    assert len(list((run / "report").glob("metrics*.json"))) == 1  # one complete report

    logs = jobs("logs", NAME).stdout  # worker 0 by default
    assert "test accuracy" in logs and "all 2 workers joined" in logs
    worker1 = jobs("logs", NAME, "--worker", "1").stdout
    assert "worker 1 done" in worker1 and "report:" not in worker1
    both = jobs("logs", NAME, "--all-workers").stdout
    assert "[worker 0] " in both and "[worker 1] " in both

    status = jobs("status", NAME).stdout
    assert "2 of 2 workers 0 Succeeded, 1 Succeeded" in status, status

    jobs("delete", NAME)
    wait_for("the Service to go", kube.core.list_namespaced_service, namespace,
             lambda items: not [s for s in items if s.metadata.name == NAME] or None)


@pytest.mark.timeout(600)
def test_evicted_worker_restarts_all_from_the_checkpoint(as_launcher_sa, kube, namespace, tmp_path):
    run = tmp_path / "run"
    epochs = 20
    jobs = as_launcher_sa
    jobs("submit", _spec_file(tmp_path, backoff_limit=0), *_train(run, epochs))
    marker = run / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not (marker.exists() and json.loads(marker.read_text())["epoch"] >= 2):
        assert time.monotonic() < deadline, "no checkpoint after 2 epochs within 300 s"
        time.sleep(0.2)  # a local file: nothing to watch
    (victim,) = [p for p in job_pods(kube, namespace, NAME) if _index(p) == 1]
    kube.core.create_namespaced_pod_eviction(victim.metadata.name, namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=victim.metadata.name, namespace=namespace)))

    waited = jobs("wait", NAME, "--timeout", "420", timeout_seconds=440)
    assert f"job {NAME} succeeded" in waited.stdout, waited.stdout + waited.stderr
    job = kube.batch.read_namespaced_job(NAME, namespace)
    assert job.spec.backoff_limit == 0  # so nothing was counted as a failure

    pods = job_pods(kube, namespace, NAME)
    assert victim.metadata.name not in [p.metadata.name for p in pods]  # evicted: deleted
    first = [p for p in pods if p.status.phase == "Failed"]
    codes = [p.status.container_statuses[0].state.terminated.exit_code for p in first]
    assert codes == [75], codes  # worker 0 left with the stopped worker 1
    final = [p for p in pods if p.status.phase == "Succeeded"]
    assert sorted(_index(p) for p in final) == [0, 1]
    for pod in final:  # every worker resumed from worker 0's checkpoint
        log = kube.core.read_namespaced_pod_log(pod.metadata.name, namespace)
        assert "resuming from checkpoint" in log, log[-2000:]

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and metrics["resumed_from"][0] >= 2
    assert metrics["epochs_completed"] == epochs
    assert all(len(values) == epochs for values in metrics["history"].values())
