"""Real Kueue (its controller manager, CRDs and webhooks; `kueue.py`) admitting kubetrain's
Jobs on the local control plane, submitted by the launcher, running the real trainer on
builtin:digits. The node's `nvidia.com/gpu` capacity is what a device plugin would advertise (no
GPU is used: the pods train on the CPU); Kueue counts the GPUs the pods request against the
ClusterQueue's quota.

(a) two one-GPU Jobs, quota for one: the second stays suspended and `jobs status` names its
    LocalQueue and position, then it runs once the first has ended;
(b) `workers: 2` with quota for one pod's GPU: neither pod is created; with the quota raised to
    both, both start (gang admission);
(c) a `queue_priority: high` Job preempts a running low one: the low one's pod gets SIGTERM, the
    trainer checkpoints and exits 143, the Job is re-queued, resumes from its checkpoint and
    completes with every epoch once, `backoffLimit` (0) not spent;
and `jobs status` / `submit --check` on Jobs that cannot schedule (GPUs beyond any node, a taint
not tolerated).
"""

from __future__ import annotations

import json
import threading
import time

import kueue as kq
import pytest
from cluster_helpers import NODE_NAME, REPO, job_pods, wait_for
from kubernetes import client, watch

pytestmark = pytest.mark.cluster

KIND = REPO / "examples" / "kind.yaml"


@pytest.fixture
def queue(kueue, kube, namespace):
    """make(gpus=N, preemption=False): a ClusterQueue for this namespace with N GPUs, its
    LocalQueue `q`; returns the ClusterQueue's name. Deleted after the test."""
    made = []

    def make(gpus: int, preemption: bool = False) -> str:
        name = f"cq-{namespace}"[:63]
        kq.apply_objects(kube.api, kq.queues(name, namespace, "q", gpus=gpus,
                                                   preemption=preemption))
        made.append(name)
        return name

    yield make
    custom = client.CustomObjectsApi(kube.api)
    for name in made:
        custom.delete_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", name)


def submit(launcher, tmp_path, name: str, *sets: str, check: bool = True):
    flags = ["--set", f"name={name}", "--set", "data=builtin:digits",
             "--set", f"output={tmp_path / name}"]
    for s in sets:
        flags += ["--set", s]
    return launcher("submit", str(KIND), *flags, check=check)


def workload(kube, namespace: str, job: str, predicate, what: str, timeout_seconds: float = 60):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        found = kq.workloads_of(kube.api, namespace, job)
        if found and predicate(found[-1]):
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for the workload of {job} to be {what}: {found}")


def pending_quota(w: dict) -> bool:
    return kq.condition(w, "QuotaReserved") == "False" and bool(
        [c for c in w["status"]["conditions"] if c["type"] == "QuotaReserved" and c.get("message")])


def running_pods(kube, namespace, job):
    return wait_for(f"a running pod of {job}", kube.core.list_namespaced_pod, namespace,
                    lambda pods: [p for p in pods if p.status.phase == "Running"],
                    label_selector=f"batch.kubernetes.io/job-name={job}", timeout_seconds=120)


@pytest.mark.timeout(420)
def test_quota_for_one_the_second_waits_with_its_queue_position_then_runs(
        launcher, kube, namespace, kubetrain_base, queue, tmp_path):
    queue(gpus=1)
    submit(launcher, tmp_path, "first", "queue=q", "gpus=1", "epochs=2")
    running_pods(kube, namespace, "first")
    submit(launcher, tmp_path, "second", "queue=q", "gpus=1", "epochs=1")
    workload(kube, namespace, "second", pending_quota, "waiting for quota")
    submit(launcher, tmp_path, "third", "queue=q", "gpus=1", "epochs=1")
    workload(kube, namespace, "third", pending_quota, "waiting for quota")

    status = launcher("status", "second").stdout
    assert "job second (namespace " in status and "Suspended" in status
    assert ("waiting: queued in LocalQueue 'q', position 1 of 2 (next): quota in use: 1 more "
            "nvidia.com/gpu needed than is free in flavor default-flavor") in status, status
    third = launcher("status", "third").stdout
    assert "waiting: queued in LocalQueue 'q', position 2 of 2 (behind 1 workload)" in third, third
    listed = launcher("list").stdout
    assert any(line.split()[:3] == ["job", "second", "Suspended"] and "queued in LocalQueue 'q'"
               in line for line in listed.splitlines()), listed
    assert kube.batch.read_namespaced_job("second", namespace).spec.suspend is True
    assert not job_pods(kube, namespace, "second")
    launcher("delete", "third")

    waited = launcher("wait", "second", "--timeout", "300", timeout_seconds=320)
    assert "job second succeeded" in waited.stdout
    first = kube.batch.read_namespaced_job("first", namespace)
    assert first.status.succeeded == 1
    (second_pod,) = job_pods(kube, namespace, "second")
    # admitted only once the first had released its GPU (timestamps have 1 s resolution)
    assert second_pod.metadata.creation_timestamp >= first.status.completion_time
    assert json.loads((tmp_path / "second" / "report" / "metrics.json").read_text())[
        "epochs_completed"] == 1


@pytest.mark.timeout(300)
def test_two_workers_are_admitted_together_or_not_at_all(
        launcher, kube, namespace, kubetrain_base, queue, tmp_path):
    cq = queue(gpus=1)
    submit(launcher, tmp_path, "gang", "queue=q", "gpus=1", "workers=2", "epochs=1")
    w = workload(kube, namespace, "gang", pending_quota, "refused for quota")
    message = next(c["message"] for c in w["status"]["conditions"] if c["type"] == "QuotaReserved")
    assert "nvidia.com/gpu" in message
    status = launcher("status", "gang").stdout
    assert ("quota exceeded for nvidia.com/gpu: needs 2, more than the ClusterQueue's 1 in "
            "flavor default-flavor") in status, status
    time.sleep(3)  # give a partial admission, were there one, the time to create a pod
    assert not job_pods(kube, namespace, "gang")

    kq.apply_objects(kube.api, kq.queues(cq, namespace, "q", gpus=2))
    pods = wait_for("both workers running", kube.core.list_namespaced_pod, namespace,
                    lambda pods: len([p for p in pods if p.status.phase == "Running"]) == 2 and pods,
                    label_selector="batch.kubernetes.io/job-name=gang", timeout_seconds=120)
    assert {p.spec.node_name for p in pods} == {NODE_NAME}
    assert sum(int(p.spec.containers[0].resources.limits["nvidia.com/gpu"]) for p in pods) == 2
    launcher("delete", "gang")


class PodExits:
    """Watches a Job's pods in the background and keeps each pod's trainer exit code."""

    def __init__(self, kube, namespace: str, job: str):
        self.codes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(kube, namespace, job), daemon=True)
        self._thread.start()

    def _run(self, kube, namespace, job):
        while not self._stop.is_set():
            stream = watch.Watch().stream(kube.core.list_namespaced_pod, namespace,
                                          label_selector=f"batch.kubernetes.io/job-name={job}",
                                          timeout_seconds=5)
            for event in stream:
                pod = event["object"]
                for cs in pod.status.container_statuses or []:
                    if cs.state and cs.state.terminated:
                        self.codes[pod.metadata.name] = cs.state.terminated.exit_code

    def stop(self):
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(600)
def test_a_high_priority_job_preempts_a_low_one_which_resumes_from_its_checkpoint(
        launcher, kube, namespace, kubetrain_base, queue, tmp_path):
    queue(gpus=1, preemption=True)
    kq.apply_objects(kube.api, [
        {"apiVersion": kq.API_VERSION, "kind": "WorkloadPriorityClass",
         "metadata": {"name": name}, "value": value}
        for name, value in (("kubetrain-high", 1000), ("kubetrain-low", 100))])
    epochs = 4
    submit(launcher, tmp_path, "low", "queue=q", "queue_priority=kubetrain-low", "gpus=1",
           f"epochs={epochs}", "model=resnet_small", "backoff_limit=0")
    exits = PodExits(kube, namespace, "low")
    (first,) = running_pods(kube, namespace, "low")
    progress = tmp_path / "low" / "progress.json"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:  # a checkpoint exists once the first epoch has ended
        record = json.loads(progress.read_text()) if progress.exists() else {}
        if record.get("epoch", 0) >= 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"low never finished an epoch: {record}")

    submit(launcher, tmp_path, "high", "queue=q", "queue_priority=kubetrain-high", "gpus=1",
           "epochs=1")
    evicted = workload(kube, namespace, "low", lambda w: kq.condition(w, "Evicted") == "True",
                       "evicted", timeout_seconds=60)
    assert next(c["reason"] for c in evicted["status"]["conditions"] if c["type"] == "Evicted") \
        == "Preempted"
    assert "job high succeeded" in launcher("wait", "high", "--timeout", "300",
                                            timeout_seconds=320).stdout
    waited = launcher("wait", "low", "--timeout", "400", timeout_seconds=420, check=False)
    exits.stop()
    assert waited.returncode == 0, waited.stdout + waited.stderr

    assert exits.codes.get(first.metadata.name) == 143, exits.codes  # SIGTERM, checkpoint saved
    job = kube.batch.read_namespaced_job("low", namespace)
    assert job.status.succeeded == 1 and not job.status.failed  # backoffLimit 0 not spent
    metrics = json.loads((tmp_path / "low" / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    assert len(metrics["history"]["loss"]) == epochs  # every epoch once: none redone, none lost
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "low" / "logs").glob("*.log")))
    assert "resuming from checkpoint" in logs
    assert "SIGTERM received" in logs


@pytest.mark.timeout(240)
def test_status_and_check_name_why_a_job_cannot_schedule(
        launcher, kube, namespace, kubetrain_base, tmp_path):
    # GPUs beyond any node: the test node advertises 8
    checked = submit(launcher, tmp_path, "huge", "gpus=16", "memory=32Gi", check=False)
    assert checked.returncode == 0  # a plain submit is accepted: the API server cannot know
    cant = launcher("submit", str(KIND), "--set", "name=huge2", "--set", "gpus=16",
                    "--set", "memory=32Gi", "--set", "data=builtin:digits",
                    "--set", f"output={tmp_path / 'huge2'}", "--check", check=False)
    assert cant.returncode == 2, cant.stdout + cant.stderr
    assert (f"no node could hold the pod: no node has 16 GPUs (the most allocatable: 8 on node "
            f"{NODE_NAME}; nvidia.com/gpu)") in cant.stderr
    assert not [j for j in kube.batch.list_namespaced_job(namespace).items
                if j.metadata.name == "huge2"]  # --check created nothing
    wait_for("the scheduler to give up on huge", kube.core.list_namespaced_pod, namespace,
             lambda pods: [p for p in pods for c in p.status.conditions or []
                           if c.type == "PodScheduled" and c.status == "False"],
             label_selector="batch.kubernetes.io/job-name=huge")
    status = launcher("status", "huge").stdout
    assert ("waiting: unschedulable: no node has 16 GPUs (the most allocatable: 8 on node "
            f"{NODE_NAME}; nvidia.com/gpu)") in status, status
    launcher("delete", "huge")

    # a taint the pod does not tolerate
    taint = {"key": "kubetrain.dev/maintenance", "value": "yes", "effect": "NoSchedule"}
    node = kube.core.read_node(NODE_NAME)
    kube.core.patch_node(NODE_NAME, {"spec": {"taints": [*(node.spec.taints or []), taint]}})
    try:
        submit(launcher, tmp_path, "tainted", "gpus=1")
        wait_for("the scheduler to refuse tainted", kube.core.list_namespaced_pod, namespace,
                 lambda pods: [p for p in pods for c in p.status.conditions or []
                               if c.type == "PodScheduled" and c.status == "False"],
                 label_selector="batch.kubernetes.io/job-name=tainted")
        status = launcher("status", "tainted").stdout
        assert (f"waiting: unschedulable: node {NODE_NAME} has taint "
                "kubetrain.dev/maintenance=yes:NoSchedule, not tolerated by the pod") in status, status
        cant = launcher("submit", str(KIND), "--set", "name=tainted2", "--set", "gpus=1",
                        "--set", "data=builtin:digits", "--set", f"output={tmp_path / 't2'}",
                        "--check", check=False)
        assert cant.returncode == 2 and "has taint kubetrain.dev/maintenance=yes:NoSchedule" \
            in cant.stderr, cant.stdout + cant.stderr
    finally:
        kube.core.patch_node(NODE_NAME, {"spec": {"taints": node.spec.taints}})
    launcher("delete", "tainted")

    # a LocalQueue that does not exist
    cant = launcher("submit", str(KIND), "--set", "name=lost", "--set", "queue=nope",
                    "--set", "data=builtin:digits", "--set", f"output={tmp_path / 'lost'}",
                    "--check", check=False)
    assert cant.returncode == 2 and "LocalQueue 'nope' does not exist" in cant.stderr, cant.stderr


def test_kueue_listens_on_loopback_only_and_its_webhooks_are_loopback_urls(kueue, kube):
    from controlplane import listening_addresses

    pid = kueue.plane.processes["kueue"].pid
    sockets = listening_addresses([pid])
    assert sockets and all(addr == "127.0.0.1" for _, addr, _ in sockets), sockets
    admission = client.AdmissionregistrationV1Api(kube.api)
    hooks = [h for cfg in (admission.list_mutating_webhook_configuration().items
                           + admission.list_validating_webhook_configuration().items)
             if cfg.metadata.name.startswith("kueue-") for h in cfg.webhooks]
    assert any(h.name == "mjob.kb.io" for h in hooks)  # suspends a queued Job at creation
    assert all(h.client_config.url.startswith(f"https://127.0.0.1:{kueue.webhook_port}/")
               for h in hooks)


@pytest.mark.timeout(180)
def test_the_launchers_role_can_read_what_why_pending_needs(
        control_plane, kube, namespace, kubetrain_base, queue, tmp_path):
    """As the kubetrain-launcher ServiceAccount with only k8s/base's Role and ClusterRole: the
    Workload, the LocalQueue and the Nodes are readable, so the reasons are the full ones."""
    from cluster_helpers import Launcher, token_kubeconfig

    sa = Launcher(token_kubeconfig(control_plane, kube, namespace, "kubetrain-launcher",
                                   tmp_path / "launcher.kubeconfig"), namespace)
    queue(gpus=0)
    submit(sa, tmp_path, "never", "queue=q", "gpus=1")
    workload(kube, namespace, "never", pending_quota, "refused for quota")
    status = sa("status", "never").stdout
    assert ("waiting: queued in LocalQueue 'q', position 1 of 1 (next): quota exceeded for "
            "nvidia.com/gpu: needs 1, more than the ClusterQueue's 0") in status, status
    cant = sa("submit", str(KIND), "--set", "name=huge", "--set", "gpus=16", "--set", "memory=32Gi",
              "--set", "data=builtin:digits", "--set", f"output={tmp_path / 'huge'}", "--check",
              check=False)
    assert cant.returncode == 2 and "no node has 16 GPUs" in cant.stderr, cant.stdout + cant.stderr
    sa("delete", "never")


def test_k8s_kueue_is_accepted_by_kueues_crds_and_webhooks(kueue, kube):
    """k8s/kueue/queues.yaml (what `make cluster-up` applies, and the example for real
    clusters), created with a server dry run: Kueue's CRD schemas and validating webhooks pass it."""
    import yaml

    custom = client.CustomObjectsApi(kube.api)
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "kueue" / "queues.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"ResourceFlavor", "ClusterQueue", "LocalQueue",
                                         "WorkloadPriorityClass"}
    for doc in docs:
        plural = kq.PLURALS[doc["kind"]]
        # Under a name of its own: `make cluster-up` (the kueue fixture) applied these very
        # objects, and a dry-run create of an existing name is a 409 before any validation.
        checked = {**doc, "metadata": {**doc["metadata"], "name": f"{doc['metadata']['name']}-dry-run"}}
        if doc["kind"] in kq.NAMESPACED:
            checked["metadata"].pop("namespace", None)
            custom.create_namespaced_custom_object(kq.GROUP, kq.VERSION, "default", plural, checked,
                                                   dry_run="All")
        else:
            custom.create_cluster_custom_object(kq.GROUP, kq.VERSION, plural, checked, dry_run="All")
