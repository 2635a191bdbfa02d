"""Fixtures for tests against the real control plane (tests/cluster/test_*.py).

`control_plane` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the
test kubelet on 127.0.0.1, started once, stopped at the end of the session (and killed with the
pytest process if it dies). Without the binaries (`make cluster-build`) the tests are skipped,
with the reason, unless CI=true, where that is a failure.

`namespace` (function): a fresh namespace per test, deleted afterwards.
`kube` (function): admin API clients.
`launcher` (function): runs `python -m jobs ...` against the cluster, in the test's namespace.
`kubetrain_base` (function): k8s/base's ServiceAccounts and launcher Role applied to it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid

import controlplane
import pytest
from cluster_helpers import Kube, Launcher, apply_kubetrain_base, base_namespace_labels
from kubernetes import client


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    binaries = controlplane.Binaries.default()
    missing = binaries.missing()
    if missing:
        go = "Go found" if shutil.which("go") else "Go not found on PATH"
        message = (
            f"local control plane not built ({', '.join(p.name for p in missing)} missing in "
            f"{missing[0].parent}); run `make cluster-build` (needs Go >= 1.26; {go})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    plane = controlplane.ControlPlane(tmp_path_factory.mktemp("cluster"), binaries)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube(control_plane) -> Kube:
    api = control_plane.api_client()
    yield Kube(api, client.CoreV1Api(api), client.BatchV1Api(api),
               client.RbacAuthorizationV1Api(api))
    api.close()


@pytest.fixture
def namespace(control_plane, kube, request) -> str:
    """A namespace of its own for the test (with its default ServiceAccount ready), labelled
    like k8s/base's: the API server enforces the restricted Pod Security Standard on it."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": base_namespace_labels()}})
    controlplane.wait_for_service_account(kube.api, name, time.monotonic() + 60)
    yield name
    kube.core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def launcher(control_plane, namespace) -> Launcher:
    return Launcher(control_plane.kubeconfig, namespace)


@pytest.fixture
def kubetrain_base(kube, namespace) -> None:
    """k8s/base's ServiceAccounts and the launcher's Role and RoleBinding in the namespace."""
    apply_kubetrain_base(kube.api, namespace)
