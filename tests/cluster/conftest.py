"""Fixtures for tests against the real control plane (tests/cluster/test_*.py).

`control_plane` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the
test kubelet on 127.0.0.1, started once, stopped at the end of the session (and killed with the
pytest process if it dies). Without the binaries (`make cluster-build`) the tests are skipped,
with the reason, unless CI=true, where that is a failure.

`namespace` (function): a fresh namespace per test, deleted afterwards.
`kube` (function): admin API clients.
`launcher` (function): runs `python -m jobs ...` against the cluster, in the test's namespace.
`kubetrain_base` (function): k8s/base's ServiceAccounts and launcher Role applied to it.
`kueue` (session): Kueue's controller manager, CRDs and webhooks on the same control plane
(`kueue.py`), started by the first test that asks for it; skipped like the control plane when
`make cluster-build` has not built it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass

import controlplane
import kueue as kueue_module
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


@pytest.fixture(scope="session")
def kueue(control_plane):
    absent = kueue_module.missing()
    if absent:
        message = (f"Kueue not built ({absent[0]} missing); run `make cluster-build` "
                   "(tests/cluster/build_kueue.sh)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    running = kueue_module.Kueue(control_plane)
    running.start()
    return running  # ControlPlane.stop() ends it with the rest


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


@dataclass
class RealNode:
    """A control plane whose node is the real one (node.py) and its admin API client."""

    plane: controlplane.ControlPlane
    api: client.ApiClient


def _real_node_unavailable() -> str:
    import node

    missing = node.host_missing()
    missing += [p.name for p in controlplane.Binaries.default().missing()]
    missing += [f"{p.name} (bash tests/cluster/build_node.sh)"
                for p in node.NodeBinaries.default().missing()]
    return f"the real node cannot run here: missing {', '.join(missing)}" if missing else ""


@pytest.fixture(scope="session")
def real_node(tmp_path_factory):
    """The control plane with the real node (containerd, kubelet, kube-proxy, CoreDNS), its
    images imported (`real_node_images()`); stopped at the end, and checked to leave nothing
    running, mounted or bridged."""
    import node

    reason = _real_node_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("realnode")
    plane = controlplane.ControlPlane(state, node="real", images=real_node_images())
    plane.start(timeout_seconds=300)
    api = plane.api_client()
    try:
        yield RealNode(plane, api)
    finally:
        api.close()
        pids = list(plane.pids().values())
        plane.stop()
        left = [pid for pid in pids if controlplane._alive(pid)]
        left += node._pids_matching(str(node.socket_path(state)))
        problems = [f"processes left: {left}"] if left else []
        problems += [f"mounted: {m}" for m in node.mounts_under(state)]
        problems += [f"bridge {node.BRIDGE} left"] if node.bridge_exists() else []
        problems += [f"iptables: {r}" for r in node.kube_rules()]
        assert not problems, "the real node left: " + "; ".join(problems)


def real_node_images() -> list:
    """Image archives to import into the real node at its start, besides its own (none: the
    trainer's image is imported by the `trainer_image` fixture, only for the tests that use it)."""
    return []


TRAINER_IMAGE = "docker.io/library/kubetrain-trainer-cpu:0.1.0"  # examples/kind.yaml's image


def trainer_image_archive() -> tuple[object, str]:
    """(archive, "") of the CPU trainer image, else (None, why not): `$KUBETRAIN_TRAINER_IMAGE`
    (an archive file), else tests/image/images.py's archive, built there when missing."""
    from pathlib import Path

    given = os.environ.get("KUBETRAIN_TRAINER_IMAGE")
    if given:
        path = Path(given)
        return (path, "") if path.is_file() else (None, f"KUBETRAIN_TRAINER_IMAGE={given}: no such file")
    try:
        from tests.image import images
    except ImportError as exc:
        return None, f"no trainer image builder (tests/image/images.py: {exc})"
    missing = images.missing_tools()
    if missing:
        return None, f"cannot build the trainer image: missing {', '.join(missing)}"
    return images.export(images.ensure_trainer_image("cpu")[0]), ""


@pytest.fixture(scope="session")
def trainer_image(real_node) -> str:
    """The CPU trainer image (docker/Dockerfile.cpu) imported into the real node's containerd
    under the name a kubelet resolves examples/kind.yaml's `image:` to."""
    import node

    archive, reason = trainer_image_archive()
    if archive is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    node.import_image(real_node.plane.state_dir, archive, name=TRAINER_IMAGE)
    return TRAINER_IMAGE


@pytest.fixture(scope="session")
def kind_namespace(real_node) -> str:
    """k8s/base's namespace `kubetrain` with its ServiceAccounts and launcher Role, and the kind
    overlay's object store (fake-gcs) in it, as `make cluster-up` leaves it."""
    import local_cluster

    return local_cluster.prepare_namespace(real_node.api, object_store=True)
