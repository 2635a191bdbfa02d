"""The real node (`node.py`): containerd, runc and CNI under the real kubelet, kube-proxy and
CoreDNS, registered with the local control plane. These tests use the node's own small images
(busybox, fake-gcs-server); test_real_node_trainer.py runs the trainer's image on it.

Skipped, with the reason, when the host cannot run it (not root, no containerd, node binaries
not built); under CI=true that is a failure. One real node per host at a time (the bridge).
"""

from __future__ import annotations

import json
import time
import urllib.request

import controlplane
import node
import pytest
from cluster_helpers import base_namespace_labels, wait_for
from kubernetes import client

pytestmark = pytest.mark.cluster

RESTRICTED = {  # what the restricted Pod Security Standard asks of every container
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, script: str, *, memory: str = "32Mi", **spec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "main", "image": node.BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "resources": {"limits": {"cpu": "100m", "memory": memory}},
                "securityContext": RESTRICTED,
            }],
            **spec,
        },
    }


def finished(core, namespace: str, name: str, timeout_seconds: float = 90):
    return wait_for(f"pod {name} to finish", core.list_namespaced_pod, namespace,
                    lambda pods: [p for p in pods if p.status.phase in ("Succeeded", "Failed")],
                    timeout_seconds=timeout_seconds, field_selector=f"metadata.name={name}")[0]


def running(core, namespace: str, name: str, timeout_seconds: float = 90):
    def ready(pods):
        return [p for p in pods if p.status.phase == "Running" and all(
            s.ready for s in p.status.container_statuses or [])]
    return wait_for(f"pod {name} to be ready", core.list_namespaced_pod, namespace, ready,
                    timeout_seconds=timeout_seconds, field_selector=f"metadata.name={name}")[0]


def terminated(pod_status):
    return pod_status.status.container_statuses[0].state.terminated


def get_json(url: str, timeout_seconds: float):
    """GET a JSON document, retrying while kube-proxy has not yet programmed a new Service."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {url}: {exc}") from None
            time.sleep(0.5)


@pytest.fixture
def ns(real_node):
    """A namespace with the restricted Pod Security Standard (as k8s/base's)."""
    core = client.CoreV1Api(real_node.api)
    name = f"node-{time.monotonic_ns() % 10**8}"
    core.create_namespace({"metadata": {"name": name, "labels": base_namespace_labels()}})
    controlplane.wait_for_service_account(real_node.api, name, time.monotonic() + 60)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_the_node_is_containerd_under_the_real_kubelet(real_node):
    (found,) = client.CoreV1Api(real_node.api).list_node().items
    info = found.status.node_info
    assert info.container_runtime_version.startswith("containerd://1.")
    assert info.kubelet_version == controlplane.kubernetes_version()
    assert info.kube_proxy_version in ("", controlplane.kubernetes_version())  # deprecated field
    assert {a.address for a in found.status.addresses} >= {node.NODE_IP}
    listening = controlplane.listening_addresses(list(real_node.plane.pids().values()))
    assert {addr for _, addr, _ in listening} <= {"127.0.0.1", node.NODE_IP}, listening


def test_a_pod_runs_as_a_container_with_its_security_context_and_limits(real_node, ns):
    core = client.CoreV1Api(real_node.api)
    script = ("id -u; cat /proc/self/status | grep -E '^(CapEff|Seccomp|NoNewPrivs):';"
              " touch /rootfs-write 2>&1 || echo read-only;"
              " cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    core.create_namespaced_pod(ns, pod("secure", script))
    done = finished(core, ns, "secure")
    assert done.status.phase == "Succeeded", done.status
    status = done.status.container_statuses[0]
    assert status.container_id.startswith("containerd://")
    log = core.read_namespaced_pod_log("secure", ns)  # through the kubelet's own API
    lines = log.split("\n")
    assert lines[0] == "65534"
    assert "CapEff:\t0000000000000000" in log
    assert "NoNewPrivs:\t1" in log
    assert "Seccomp:\t2" in log  # filter mode: RuntimeDefault applied by containerd
    assert "read-only" in log
    assert str(32 * 2**20) in lines  # the memory limit as the kernel enforces it
    assert done.status.pod_ip.startswith(node.NODE_IP.rsplit(".", 1)[0] + ".")


def test_a_container_over_its_memory_limit_is_oom_killed(real_node, ns):
    core = client.CoreV1Api(real_node.api)
    core.create_namespaced_pod(ns, pod("hog", "x=$(head -c 67108864 /dev/zero | tr '\\0' a);"
                                              " echo survived", memory="16Mi"))
    done = finished(core, ns, "hog")
    state = terminated(done)
    assert (state.exit_code, state.reason) == (137, "OOMKilled"), state


def test_sigterm_reaches_the_main_process_on_delete(real_node, ns):
    core = client.CoreV1Api(real_node.api)
    script = "trap 'echo got TERM; exit 143' TERM; echo ready; while true; do sleep 0.2; done"
    core.create_namespaced_pod(ns, pod("term", script, terminationGracePeriodSeconds=30))
    running(core, ns, "term")
    wait_for("the pod to log ready", core.list_namespaced_pod, ns,
             lambda _: "ready" in core.read_namespaced_pod_log("term", ns),
             field_selector="metadata.name=term", timeout_seconds=30)
    seen = []

    def watch_exit(pods):
        for p in pods:
            if p.status.container_statuses and terminated(p):
                seen.append(terminated(p))
        return seen or not pods
    start = time.monotonic()
    core.delete_namespaced_pod("term", ns, grace_period_seconds=30)
    wait_for("the container to exit", core.list_namespaced_pod, ns, watch_exit,
             field_selector="metadata.name=term", timeout_seconds=60)
    assert time.monotonic() - start < 25  # it exited on SIGTERM, not on the grace period's KILL
    if seen:  # the API may drop the pod before we see its final status
        assert seen[0].exit_code == 143


def test_services_and_pod_subdomains_resolve_and_route(real_node, ns):
    core = client.CoreV1Api(real_node.api)
    server = pod("web", "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html &&"
                        " exec httpd -f -p 8080 -h /tmp/www",
                 hostname="web-0", subdomain="workers")
    server["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
    server["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    server["spec"]["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    core.create_namespaced_pod(ns, server)
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    core.create_namespaced_service(ns, {"metadata": {"name": "workers"}, "spec": {
        "clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}})
    web = running(core, ns, "web")
    cluster_ip = core.read_namespaced_service("web", ns).spec.cluster_ip
    # busybox's nslookup asks the pod's nameserver (CoreDNS behind the kube-dns Service) itself
    # but applies no search list, and its static wget cannot resolve names (static glibc; its -T crashes): the
    # names are looked up in full, then fetched by address (the trainer's image resolves
    # through glibc, search list included: test_real_node_trainer.py).
    script = (f"set -e; nslookup web.{ns}.svc.cluster.local; nslookup web-0.workers.{ns}.svc"
              f".cluster.local; cat /etc/resolv.conf; wget -q -O - http://{cluster_ip}/;"
              f" wget -q -O - http://{web.status.pod_ip}:8080/")
    core.create_namespaced_pod(ns, pod("client", script))
    done = finished(core, ns, "client")
    log = core.read_namespaced_pod_log("client", ns)
    assert done.status.phase == "Succeeded", log
    assert f"Address: {cluster_ip}" in log  # the Service's ClusterIP, by its DNS name
    assert f"Address: {web.status.pod_ip}" in log  # <pod>.<subdomain>, the headless Service
    assert log.count("hello-from-web") == 2, log  # via kube-proxy's ClusterIP, and directly
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local" in log
    assert f"nameserver {node.DNS_SERVICE_IP}" in log


def test_the_kind_overlays_object_store_runs_from_its_local_image(real_node):
    """local_cluster's object store: the kind overlay's fake-gcs Deployment and Service."""
    import local_cluster

    core = client.CoreV1Api(real_node.api)
    name = "store-check"
    core.create_namespace({"metadata": {"name": name, "labels": base_namespace_labels()}})
    try:
        controlplane.wait_for_service_account(real_node.api, name, time.monotonic() + 60)
        local_cluster.start_object_store(real_node.api, name, time.monotonic() + 120)
        (store,) = core.list_namespaced_pod(
            name, label_selector="app.kubernetes.io/name=fake-gcs").items
        assert store.status.container_statuses[0].image == node.FAKE_GCS_IMAGE
        assert store.status.container_statuses[0].container_id.startswith("containerd://")
        service = core.read_namespaced_service("fake-gcs", name)
        url = f"http://{service.spec.cluster_ip}:4443/storage/v1/b"  # from the host, kube-proxy
        buckets = get_json(url, timeout_seconds=60)
        assert [b["name"] for b in buckets["items"]] == ["kubetrain"]
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.mark.timeout(300)
def test_a_job_whose_image_cannot_be_pulled_says_so_in_status_and_wait(real_node, kind_namespace, tmp_path):
    """examples/kind.yaml with an image the node does not have (a kind user who skipped
    `make kind-load`; the spec's pull policy is Never): the real kubelet reports
    ErrImageNeverPull, and `jobs status` and `jobs wait` name the image and the kubelet's
    message in one line."""
    from test_real_node_trainer import jobs, spec_file

    spec = spec_file(tmp_path, name="digits-noimage", image="kubetrain-missing:0.0.0",
                     train={"output": "gs://kubetrain/runs/digits-noimage"})
    kubeconfig = real_node.plane.kubeconfig
    submitted = jobs(kubeconfig, "submit", str(spec))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    try:
        def said_why():
            shown = jobs(kubeconfig, "status", "digits-noimage", "-n", kind_namespace, timeout=60).stdout
            return shown if "image kubetrain-missing:0.0.0 not pulled" in shown else None

        deadline = time.monotonic() + 180
        shown = said_why()
        while shown is None and time.monotonic() < deadline:
            time.sleep(2)
            shown = said_why()
        assert shown is not None, jobs(kubeconfig, "status", "digits-noimage", "-n", kind_namespace).stdout
        reason = next(line for line in shown.splitlines() if "not pulled" in line)
        assert "(ErrImageNeverPull)" in reason and "kubetrain-missing:0.0.0" in reason, reason
        waited = jobs(kubeconfig, "wait", "digits-noimage", "-n", kind_namespace, "--timeout", "5")
        assert waited.returncode != 0
        assert "image kubetrain-missing:0.0.0 not pulled" in waited.stdout + waited.stderr, waited.stdout + waited.stderr
    finally:
        jobs(kubeconfig, "delete", "digits-noimage", "-n", kind_namespace)
