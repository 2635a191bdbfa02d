"""A local Kubernetes without Docker, for use by hand: `make cluster-up` / `make cluster-down`.

    python tests/cluster/local_cluster.py up      # prints `export KUBECONFIG=...`
    python tests/cluster/local_cluster.py status
    python tests/cluster/local_cluster.py down

The same control plane the test suite uses (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the test kubelet), all on 127.0.0.1, left running in the background. Its files
(kubeconfig, certificates, logs, pod directories) live in
`${KUBETRAIN_CACHE:-~/.cache/kubetrain}/cluster-state` unless `--state-dir` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import controlplane
import yaml
from cluster_helpers import BASE, apply_kubetrain_base
from kubernetes import client


def up(state_dir: Path, timeout_seconds: float) -> int:
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
    shutil.rmtree(state_dir, ignore_errors=True)  # a stopped cluster's state is not reused
    plane = controlplane.ControlPlane(state_dir, binaries, die_with_parent=False)
    try:
        plane.start(timeout_seconds=timeout_seconds)
    except controlplane.ControlPlaneError as exc:
        print(f"cluster did not start: {exc}", file=sys.stderr)
        return 1
    listening = controlplane.listening_addresses(list(plane.pids().values()))
    exposed = [(pid, addr, port) for pid, addr, port in listening if addr != "127.0.0.1"]
    if exposed:
        plane.stop()
        print(f"refusing to run: sockets not on loopback: {exposed}", file=sys.stderr)
        return 1
    # Ready for the example specs: k8s/base's namespace, ServiceAccounts and launcher Role.
    base_namespace = yaml.safe_load((BASE / "namespace.yaml").read_text())
    namespace = base_namespace["metadata"]["name"]
    try:
        api = plane.api_client()
        client.CoreV1Api(api).create_namespace(base_namespace)
        controlplane.wait_for_service_account(api, namespace, time.monotonic() + 60)
        apply_kubetrain_base(api, namespace)
    except BaseException:
        plane.stop()
        raise
    ports = ", ".join(str(port) for _, _, port in sorted(listening, key=lambda x: x[2]))
    print(f"cluster up: API server {plane.server}, node {plane.node_name}, listening on "
          f"127.0.0.1 ports {ports}; namespace {namespace} with k8s/base's ServiceAccounts and "
          f"launcher Role; logs in {plane.log_dir}", file=sys.stderr)
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


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
    parser.add_argument("--timeout-seconds", type=float, default=180,
                        help="how long `up` waits for everything to be healthy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.command == "up":
        return up(args.state_dir, args.timeout_seconds)
    if args.command == "down":
        return down(args.state_dir)
    return status(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
