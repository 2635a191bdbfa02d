"""The control plane itself: loopback only, RBAC enforced, a GPU node, the pinned release."""

import controlplane
import pytest
from cluster_helpers import token_kubeconfig
from kubernetes import client, config
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster


def test_everything_listens_on_loopback_only(control_plane):
    listening = controlplane.listening_addresses(list(control_plane.pids().values()))
    owners = {pid for pid, _, _ in listening}
    # etcd (client and peer), API server, controller manager, scheduler, kubelet.
    assert len(listening) >= 6 and owners == set(control_plane.pids().values())
    assert {address for _, address, _ in listening} == {"127.0.0.1"}, listening


def test_runs_the_pinned_release_with_a_gpu_node(control_plane, kube):
    version = client.VersionApi(kube.api).get_code()
    assert version.git_version == controlplane.kubernetes_version()
    node = kube.core.read_node(control_plane.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert not node.spec.taints
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == ["127.0.0.1"]


def test_rbac_is_enforced(control_plane, kube, namespace, tmp_path):
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    path = token_kubeconfig(control_plane, kube, namespace, "nobody", tmp_path / "kubeconfig")
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod(namespace)
    assert caught.value.status == 403
