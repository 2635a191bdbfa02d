"""A real Kubernetes control plane on loopback: etcd, API server, controllers, scheduler, a node.

The binaries come from `tests/cluster/build.sh` (built through the Go module proxy and cached
outside the repo). `ControlPlane.start()` generates a CA and keys, starts every process in its
own process group with its log in `<state>/logs/`, writes an admin kubeconfig and waits, within
a deadline, until each part answers its health endpoint and the node is registered.
`ControlPlane.stop()` (or `stop_recorded(state_dir)` from another process) ends them all.

Everything listens on 127.0.0.1 only. Pods run on the test kubelet (`kubelet.py`), which runs
each container's command as a local process, or with `node="real"` on a real node
(`node.py`: containerd, the kubelet, kube-proxy and CoreDNS; also on the node's bridge address).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pki
import yaml

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NODE_NAME = "kubetrain-node"
ADMIN_USER = "kubetrain-admin"
SERVICE_CIDR = "10.0.0.0/24"
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    # for the real node's Services and the kind overlay's object store (a Deployment)
    "endpointslice-controller",
    "deployment-controller",
    "replicaset-controller",
)
# Only with the real node, which heartbeats (the test kubelet does not): lifts the new node's
# not-ready taint once it is Ready, marks it NotReady if its kubelet stops answering.
REAL_NODE_CONTROLLERS = ("node-lifecycle-controller",)
# The node looks like a GKE node with NVIDIA L4 GPUs and the Workload Identity metadata server,
# so the example specs' nodeSelectors match it (no GPU is used: pods run on the CPU).
NODE_LABELS = {
    "cloud.google.com/gke-accelerator": "nvidia-l4",
    "iam.gke.io/gke-metadata-server-enabled": "true",
}
# Stop order: the node first (the test kubelet ends its pods; the real node's pods are removed
# through the CRI before containerd stops), etcd last.
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
               "containerd", "kubelet", "kube-proxy", "coredns", "kueue")
# Kueue (kueue.py) is started after the node, when wanted, and stopped first.
NODE_KINDS = ("test", "real")
PIDS_FILE = "pids"


class ControlPlaneError(RuntimeError):
    """A part of the control plane did not start or did not become healthy in time."""


def _pinned_version(go_mod: Path, module: str) -> str:
    text = go_mod.read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", text, re.MULTILINE)
    if not match:
        raise ControlPlaneError(f"{go_mod} does not require {module}")
    return match.group(1)


def kubernetes_version() -> str:
    """The Kubernetes release pinned by tests/cluster/kube/go.mod, e.g. 'v1.36.3'."""
    return _pinned_version(HERE / "kube" / "go.mod", "k8s.io/kubernetes")


def etcd_version() -> str:
    """The etcd release pinned by tests/cluster/etcd/go.mod, e.g. 'v3.6.8'."""
    return _pinned_version(HERE / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")


def default_cache_dir() -> Path:
    return Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain"))


@dataclass(frozen=True)
class Binaries:
    """Paths of the four control-plane binaries."""

    etcd: Path
    apiserver: Path
    controller_manager: Path
    scheduler: Path

    @classmethod
    def in_dir(cls, directory: Path) -> Binaries:
        return cls(
            etcd=directory / "etcd",
            apiserver=directory / "kube-apiserver",
            controller_manager=directory / "kube-controller-manager",
            scheduler=directory / "kube-scheduler",
        )

    @classmethod
    def default(cls) -> Binaries:
        """`$KUBETRAIN_K8S_BIN`, else the directory build.sh writes to."""
        override = os.environ.get("KUBETRAIN_K8S_BIN")
        if override:
            return cls.in_dir(Path(override))
        key = f"k8s-{kubernetes_version()}_etcd-{etcd_version()}"
        return cls.in_dir(default_cache_dir() / key / "bin")

    def missing(self) -> list[Path]:
        paths = (self.etcd, self.apiserver, self.controller_manager, self.scheduler)
        return [p for p in paths if not os.access(p, os.X_OK)]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def write_kubeconfig(
    path: Path, server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None,
    token: str | None = None, namespace: str | None = None, user: str = ADMIN_USER,
) -> Path:
    """Write a one-context kubeconfig (context `kubetrain-local`) with embedded credentials."""
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    credentials: dict = {}
    if cert and key:
        credentials = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    if token:
        credentials["token"] = token
    context = {"cluster": "kubetrain-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubetrain-local",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "kubetrain-local", "context": context}],
        "current-context": "kubetrain-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class ControlPlane:
    """Start, probe and stop one local cluster whose files live in `state_dir`.

    `die_with_parent=True` (tests) makes every process die with the Python process that
    started it; `make cluster-up` passes False so the cluster outlives the command.
    `node="real"` runs pods on the real node of `node.py` (root, containerd, the binaries of
    build_node.sh) instead of the test kubelet; `images` are archives imported into it.
    """

    def __init__(self, state_dir: Path, binaries: Binaries | None = None, *,
                 node_name: str = NODE_NAME, die_with_parent: bool = True,
                 node: str = "test", images: tuple[Path, ...] = ()):
        if node not in NODE_KINDS:
            raise ControlPlaneError(f"node must be one of {', '.join(NODE_KINDS)}, not {node!r}")
        self.node = node
        self.images = tuple(images)
        self.state_dir = Path(state_dir)
        self.binaries = binaries or Binaries.default()
        self.node_name = node_name
        self.die_with_parent = die_with_parent
        self.processes: dict[str, subprocess.Popen] = {}
        self.kubeconfig = self.state_dir / "admin.kubeconfig"
        self.api_port = 0
        self.pki_dir = self.state_dir / "pki"
        self.log_dir = self.state_dir / "logs"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self, timeout_seconds: float = 180) -> None:
        """Start everything and wait until it is healthy; on any failure, stop what started."""
        missing = self.binaries.missing()
        if missing:
            raise ControlPlaneError(
                "control-plane binaries missing: " + ", ".join(map(str, missing))
                + " (run `make cluster-build` or `bash tests/cluster/build.sh`)"
            )
        deadline = time.monotonic() + timeout_seconds
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise

    def _start(self, deadline: float) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        (self.state_dir / PIDS_FILE).write_text("")
        ca = pki.CertificateAuthority(self.pki_dir)
        loopback = {"server_ips": ("127.0.0.1",), "server_dns": ("localhost",)}
        serving = ca.issue("apiserver", "kube-apiserver", server_ips=("127.0.0.1", "10.0.0.1"),
                           server_dns=("localhost", "kubernetes", "kubernetes.default",
                                       "kubernetes.default.svc"))
        admin = ca.issue("admin", ADMIN_USER, organization="system:masters", client=True)
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  organization="system:masters", client=True)
        kubelet_serving = ca.issue("kubelet", f"system:node:{self.node_name}", **loopback)
        sa = pki.write_service_account_keys(self.pki_dir)

        etcd_port, etcd_peer_port = free_port(), free_port()
        self.api_port = free_port()
        cm_port, sched_port, kubelet_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"

        self._spawn("etcd", [
            str(self.binaries.etcd),
            "--name=kubetrain",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=kubetrain=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=1073741824",
        ])
        self._wait_http("etcd", f"{etcd_url}/health", deadline)

        self._spawn("kube-apiserver", [
            str(self.binaries.apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert_path}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.cert_path}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",  # loopback may not be a Service endpoint
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ])
        write_kubeconfig(self.kubeconfig, self.server, ca.cert_path, cert=admin.cert, key=admin.key)
        self._apiserver = (self.processes["kube-apiserver"].args, ca.cert_path, admin)
        self._wait_http("kube-apiserver", f"{self.server}/readyz", deadline,
                        ca=ca.cert_path, client=admin)

        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--authentication-skip-lookup=true",  # only /healthz is served to clients
            f"--client-ca-file={ca.cert_path}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--profiling=false",
        ]
        controllers = CONTROLLERS + (REAL_NODE_CONTROLLERS if self.node == "real" else ())
        self._spawn("kube-controller-manager", [
            str(self.binaries.controller_manager), *common,
            f"--secure-port={cm_port}",
            f"--controllers={','.join(controllers)}",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.cert_path}",
            "--concurrent-job-syncs=10",
        ])
        self._spawn("kube-scheduler", [
            str(self.binaries.scheduler), *common, f"--secure-port={sched_port}",
        ])
        if self.node == "real":
            import node

            self._wait_http("kube-controller-manager", f"https://127.0.0.1:{cm_port}/healthz",
                            deadline, insecure=True)
            self._wait_http("kube-scheduler", f"https://127.0.0.1:{sched_port}/healthz",
                            deadline, insecure=True)
            node.start(self, ca, deadline, images=list(self.images), labels=NODE_LABELS)
            self._wait_node_ready(deadline)
            self._wait_default_service_account("default", deadline)
            log.info("control plane and real node ready at %s", self.server)
            return
        self._spawn("kubelet", [
            sys.executable, str(HERE / "kubelet.py"),
            f"--kubeconfig={self.kubeconfig}",
            f"--node-name={self.node_name}",
            f"--port={kubelet_port}",
            f"--tls-cert={kubelet_serving.cert}",
            f"--tls-key={kubelet_serving.key}",
            f"--client-ca={ca.cert_path}",
            f"--state-dir={self.state_dir / 'kubelet'}",
            *[f"--node-label={k}={v}" for k, v in NODE_LABELS.items()],
        ])
        self._wait_http("kube-controller-manager", f"https://127.0.0.1:{cm_port}/healthz",
                        deadline, insecure=True)
        self._wait_http("kube-scheduler", f"https://127.0.0.1:{sched_port}/healthz",
                        deadline, insecure=True)
        self._wait_http("kubelet", f"https://127.0.0.1:{kubelet_port}/healthz", deadline,
                        ca=ca.cert_path)
        self._wait_node_ready(deadline)
        self._wait_default_service_account("default", deadline)
        log.info("control plane ready at %s (kubeconfig %s)", self.server, self.kubeconfig)

    def stop(self, grace_seconds: float = 10) -> None:
        """Stop every process this object started (the node first), then forget them."""
        for name in reversed(START_ORDER):
            _before_stopping(name, self.state_dir)
            proc = self.processes.pop(name, None)
            if proc is not None:
                _terminate_group(proc.pid, grace_seconds, proc=proc)
            _after_stopping(name, self.state_dir)
        (self.state_dir / PIDS_FILE).unlink(missing_ok=True)

    def restart_apiserver(self, down_seconds: float = 5, timeout_seconds: float = 120) -> None:
        """Stop kube-apiserver (SIGTERM, as a rolling upgrade does), leave it down for
        ``down_seconds`` (clients meet connection refused), and start it again with the same
        flags: the same port, certificates and etcd data. Returns once it is ready."""
        argv, ca, admin = self._apiserver
        proc = self.processes.pop("kube-apiserver")
        _terminate_group(proc.pid, 10, proc=proc)
        time.sleep(down_seconds)
        self._spawn("kube-apiserver", list(argv))
        self._wait_http("kube-apiserver", f"{self.server}/readyz", time.monotonic() + timeout_seconds,
                        ca=ca, client=admin)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logfile = (self.log_dir / f"{name}.log").open("ab")
        log.info("starting %s", name)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it with its children
            # prctl only, no locks taken: safe enough between fork and exec
            preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            cwd=self.state_dir,
            env={**os.environ, **env} if env else None,
        )
        logfile.close()
        self.processes[name] = proc
        with (self.state_dir / PIDS_FILE).open("a") as f:
            f.write(f"{name} {proc.pid} {argv[1] if name == 'kubelet' else argv[0]}\n")

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with code {proc.returncode}; last lines of "
                f"{self.log_dir / (name + '.log')}:\n{self.log_tail(name)}"
            )

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_http(self, name: str, url: str, deadline: float, *, ca: Path | None = None,
                   client: pki.KeyPair | None = None, insecure: bool = False) -> None:
        if url.startswith("https"):
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if client:
                context.load_cert_chain(client.cert, client.key)
        else:
            context = None
        last_error = "no answer"
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                with urllib.request.urlopen(url, context=context, timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(f"{name} not healthy at {url} in time ({last_error});"
                                f" log tail:\n{self.log_tail(name)}")

    def api_client(self):
        """A `kubernetes.client.ApiClient` for the admin user."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _wait_node_ready(self, deadline: float) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api_client())
        while time.monotonic() < deadline:
            self._check_alive("kubelet")
            try:
                node = core.read_node(self.node_name)
                ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                if ready and ready[0].status == "True":
                    return
            except ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.25)
        raise ControlPlaneError(f"node {self.node_name} not ready in time; kubelet log:\n"
                                + self.log_tail("kubelet"))

    def _wait_default_service_account(self, namespace: str, deadline: float) -> None:
        wait_for_service_account(self.api_client(), namespace, deadline)


def wait_for_service_account(api_client, namespace: str, deadline: float) -> None:
    """Wait until the namespace's `default` ServiceAccount exists (pods need it)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.1)
    raise ControlPlaneError(f"no default ServiceAccount in namespace {namespace} in time")


def _before_stopping(name: str, state_dir: Path) -> None:
    """A real node's pods go through the CRI (netns, CNI, mounts) while containerd runs."""
    if name == "containerd" and (state_dir / "node").is_dir():
        import node

        said = node.remove_pods(state_dir)
        if said:
            log.info("%s", said)


def _after_stopping(name: str, state_dir: Path) -> None:
    """After containerd: the real node's bridge, iptables chains, cgroups, mounts, sysctls."""
    if name == "containerd" and (state_dir / "node").is_dir():
        import node

        for problem in node.clean_host(state_dir):
            log.warning("real node teardown: %s", problem)


def _terminate_group(pid: int, grace_seconds: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace_seconds`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not _alive(pid):
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)  # also reaps stragglers left in the group
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def recorded_processes(state_dir: Path) -> list[tuple[str, int]]:
    """(name, pid) of the recorded processes of a cluster that are still running as recorded."""
    path = Path(state_dir) / PIDS_FILE
    if not path.exists():
        return []
    running = []
    for line in path.read_text().splitlines():
        name, pid_text, program = line.split(" ", 2)
        pid = int(pid_text)
        # The pid must still run the program we started (pids are reused).
        if _alive(pid) and program in _cmdline(pid):
            running.append((name, pid))
    return running


def stop_recorded(state_dir: Path, grace_seconds: float = 10) -> list[str]:
    """Stop a cluster started by another process (`make cluster-up`); returns what was stopped."""
    running = dict(recorded_processes(state_dir))
    stopped = []
    for name in reversed(START_ORDER):
        _before_stopping(name, Path(state_dir))
        if name in running:
            _terminate_group(running[name], grace_seconds)
            stopped.append(name)
        _after_stopping(name, Path(state_dir))
    (Path(state_dir) / PIDS_FILE).unlink(missing_ok=True)
    return stopped


def listening_addresses(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state owned by one of `pids`."""
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            hex_addr, hex_port = local.split(":")
            found.append((inodes[inode], _decode_address(hex_addr, width), int(hex_port, 16)))
    return found


def _decode_address(hex_addr: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp* prints each 32-bit word in host (little-endian) byte order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if width == 32 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)
