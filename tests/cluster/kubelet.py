"""A small test kubelet: runs the pods bound to its node as local processes.

It registers a Node (127.0.0.1, with cpu, memory, pods and nvidia.com/gpu capacity), watches
the pods the scheduler binds to it, and for each container runs `command + args` as a local
process with the pod's environment. It reports the process's real exit code in the pod status,
so the real Job controller sees the trainer's real exit codes, and it serves container logs
over HTTPS so `kubectl logs` / `read_namespaced_pod_log` work through the API server.

    python tests/cluster/kubelet.py --kubeconfig K --node-name N --port P \
        --tls-cert C --tls-key K --client-ca CA --state-dir D

One concern a file: this one registers the node, watches its pods and starts or stops their
runners; `kubelet_pods.py` runs a pod (processes, restarts, status); `kubelet_volumes.py` builds
its volumes, environment and downward API; `kubelet_logs.py` serves container logs.

Limits (it is a test double, not a container runtime):
- no image is pulled: the container's `command` must be given (the image's entrypoint is not
  known); a command of `python`/`python3` runs with this kubelet's interpreter, so
  `python -m trainer` runs the project's own code;
- volumes (emptyDir, configMap, secret, downwardAPI, projected, persistentVolumeClaim,
  hostPath) are directories under the pod's directory (a PVC under the kubelet's state, so it
  outlives the pod); there is no mount namespace, so any argument, `--flag=` value, env value
  or workingDir that starts with a volume's mountPath is rewritten to the local directory.
  A process that builds such paths itself will not see the volume;
- resources, security contexts and probes are not enforced; a container is ready once started;
- no pod network or DNS: every pod is 127.0.0.1. A pod with a `subdomain` (the workers of an
  Indexed Job behind a headless Service) finds `<hostname>.<subdomain>[.<ns>.svc...]:<port>`
  in its env values and args rewritten to `127.0.0.1:<a port this kubelet picked for that
  name>`, the same for every pod, so N workers that all listen on one port in a real cluster
  listen on N ports here and reach each other;
- init containers run one after another, then all containers at once; restartPolicy
  OnFailure restarts a failed container in place (restartCount grows), Never does not.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubelet_logs
import urllib3
from kubelet_pods import ContainerRun, PodRunner, now
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("kubelet")


class Kubelet:
    """Registers the node, runs its pods, serves their logs."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.node_name = args.node_name
        self.state_dir = Path(args.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api = config.new_client_from_config(config_file=args.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.by_name: dict[tuple[str, str], PodRunner] = {}
        self.deleting: set[str] = set()
        self.lock = threading.Lock()
        self.loopback_ports: dict[tuple[str, str, str, int], int] = {}

    def _runner(self, pod: client.V1Pod) -> PodRunner:
        return PodRunner(self.core, self.state_dir, pod, self.loopback_port)

    def loopback_port(self, namespace: str, subdomain: str, host: str, port: int) -> int:
        """The local port that stands for ``host.subdomain:port`` (picked once, then kept)."""
        key = (namespace, subdomain, host, port)
        with self.lock:
            if key not in self.loopback_ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    self.loopback_ports[key] = sock.getsockname()[1]
            return self.loopback_ports[key]

    # -- node ------------------------------------------------------------------------------

    def register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubetrain.dev/test-kubelet": "true",
            **dict(label.split("=", 1) for label in self.args.node_label),
        }
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": labels}}
        try:
            self.core.create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(self.node_name, {"metadata": {"labels": labels}})
        resources = {
            "cpu": str(self.args.cpu),
            "memory": self.args.memory,
            "pods": str(self.args.pods),
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(self.args.gpus),
        }
        t = now()
        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubetrain test kubelet is ready",
                 "lastHeartbeatTime": t, "lastTransitionTime": t},
                *[{"type": cond, "status": "False", "reason": f"KubeletHasNo{cond}",
                   "lastHeartbeatTime": t, "lastTransitionTime": t}
                  for cond in ("MemoryPressure", "DiskPressure", "PIDPressure")],
            ],
            "nodeInfo": {
                "machineID": "kubetrain", "systemUUID": "kubetrain", "bootID": "kubetrain",
                "kernelVersion": os.uname().release, "osImage": "kubetrain test kubelet",
                "containerRuntimeVersion": "local-process://1", "kubeletVersion": "v0.0.0-test",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }
        self.core.patch_node_status(self.node_name, {"status": status})
        # The API server's TaintNodesByCondition admission taints a new node not-ready; the
        # node lifecycle controller would lift it once Ready. That controller is not run here
        # (it would also want heartbeats), so the kubelet lifts it itself.
        node = self.core.read_node(self.node_name)
        taints = [t for t in node.spec.taints or []
                  if not t.key.startswith("node.kubernetes.io/")]
        if len(taints) != len(node.spec.taints or []):
            self.core.patch_node(self.node_name, {"spec": {"taints": taints or None}})
        log.info("node %s registered (kubelet port %d)", self.node_name, self.args.port)

    # -- pods ------------------------------------------------------------------------------

    def run(self) -> None:
        self.register_node()
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in pods.items:
                    self.sync(pod, "ADDED")
                for event in watch.Watch().stream(
                        self.core.list_pod_for_all_namespaces, field_selector=selector,
                        resource_version=pods.metadata.resource_version, timeout_seconds=300,
                        allow_watch_bookmarks=True):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.sync(event["object"], event["type"])
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: history expired, list again
                    log.warning("pod watch failed (%s), listing again in 1 s", exc.status)
                    time.sleep(1)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("API server unreachable (%s), listing again in 1 s", exc)
                time.sleep(1)

    def sync(self, pod: client.V1Pod, event: str) -> None:
        uid = pod.metadata.uid
        with self.lock:
            runner = self.runners.get(uid)
        if event == "DELETED":
            if runner is not None:
                runner.terminate(0)
                with self.lock:
                    self.runners.pop(uid, None)
            return
        if pod.metadata.deletion_timestamp is not None:
            grace = pod.metadata.deletion_grace_period_seconds or 0
            if runner is not None and not runner.finished.is_set():
                runner.terminate(grace)
            elif uid not in self.deleting:
                self.deleting.add(uid)
                threading.Thread(target=self._runner(pod).delete_finally, daemon=True).start()
            return
        if runner is not None or pod.status.phase in ("Succeeded", "Failed"):
            return
        if pod.status.phase == "Running":  # started by an earlier kubelet: its process is gone
            self._runner(pod).patch_status({"phase": "Failed", "reason": "KubeletRestarted"})
            return
        runner = self._runner(pod)
        with self.lock:
            self.runners[uid] = runner
            self.by_name[runner.key] = runner
        runner.start()

    def stop_all(self, grace_seconds: float = 5) -> None:
        """On kubelet shutdown: end every pod process (SIGTERM, then SIGKILL)."""
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for runner in runners:
            with runner.lock:
                runs = [r for rs in runner.runs.values() for r in rs]
            for run in runs:
                if run.proc is None:
                    continue
                try:
                    run.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for runner in runners:
            runner.signal_all(signal.SIGKILL)

    def find_run(self, namespace: str, pod: str, container: str, previous: bool) -> ContainerRun | None:
        """The latest (or previous) run of a container, for the log server."""
        with self.lock:
            runner = self.by_name.get((namespace, pod))
        return runner.latest_run(container, previous=previous) if runner else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--port", type=int, required=True, help="HTTPS port on 127.0.0.1")
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--client-ca", required=True, help="CA of the API server's client cert")
    parser.add_argument("--state-dir", required=True, help="pod directories and logs")
    parser.add_argument("--cpu", type=int, default=64)
    parser.add_argument("--memory", default="256Gi")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu capacity")
    parser.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra label of the node (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")

    kubelet = Kubelet(args)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        kubelet_logs.serve(args.port, args.tls_cert, args.tls_key, args.client_ca, kubelet.find_run)
        kubelet.run()
    finally:
        log.info("kubelet stopping: ending all pod processes")
        kubelet.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
