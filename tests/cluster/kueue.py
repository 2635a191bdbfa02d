"""Kueue, for real, on the local control plane: its controller manager (built by
`build_kueue.sh` from the release pinned in `kueue/go.mod`), its CRDs, and its admission
webhooks served on 127.0.0.1.

`Kueue(plane).start()`:

1. creates the `kueue-system` namespace and installs the release's CRDs (waits until each is
   Established);
2. issues a serving certificate for 127.0.0.1 from a CA of its own (`pki.py`), in
   `<state>/kueue/certs/` (Kueue's internal certificate management is off: its certificates
   name `kueue-webhook-service.kueue-system.svc`, which an API server without cluster DNS or
   kube-proxy cannot reach);
3. starts `kueue --config=<state>/kueue/config.yaml` with the admin kubeconfig, the `batch/job`
   integration only, leader election off, health, metrics and webhooks on loopback ports, the
   visibility API server off (`VisibilityOnDemand=false`: an APIService can only point at a
   Service, and a Service's endpoints cannot be loopback addresses);
4. registers the release's Mutating/ValidatingWebhookConfigurations with each webhook's Service
   reference replaced by `https://127.0.0.1:<port><path>` and the CA as `caBundle`, keeping the
   webhooks for Kueue's own kinds and for batch/v1 Jobs (the other integrations are not run, and
   a webhook whose server does not answer fails every request it matches);
5. waits until a server-side dry run of a ResourceFlavor passes through the webhook.

The process is one of the control plane's (`ControlPlane.stop()` and `make cluster-down` end
it, and it dies with the test process). `queues()` / `apply_objects()` create ResourceFlavors,
ClusterQueues, LocalQueues and WorkloadPriorityClasses (`kueue.x-k8s.io/v1beta2`).
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import shutil
import time
from pathlib import Path

import controlplane
import pki
import yaml

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
NAMESPACE = "kueue-system"
PLURALS = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues",
           "LocalQueue": "localqueues", "WorkloadPriorityClass": "workloadpriorityclasses",
           "Workload": "workloads", "Cohort": "cohorts"}
NAMESPACED = {"LocalQueue", "Workload"}


def version() -> str:
    """The Kueue release pinned by tests/cluster/kueue/go.mod, e.g. 'v0.17.1'."""
    return controlplane._pinned_version(HERE / "kueue" / "go.mod", "sigs.k8s.io/kueue")


def install_dir() -> Path:
    """`$KUBETRAIN_KUEUE_DIR`, else where build_kueue.sh puts bin/kueue and config/."""
    override = os.environ.get("KUBETRAIN_KUEUE_DIR")
    return Path(override) if override else controlplane.default_cache_dir() / f"kueue-{version()}"


def missing(directory: Path | None = None) -> list[Path]:
    directory = directory or install_dir()
    needed = [directory / "bin" / "kueue", directory / "config" / "webhook.yaml",
              directory / "config" / "crd"]
    return [p for p in needed if not p.exists()]


def _keep_webhook(hook: dict) -> bool:
    """A webhook for Kueue's own kinds or for batch/v1 Jobs (the integration that runs)."""
    for rule in hook.get("rules") or []:
        groups, resources = rule.get("apiGroups") or [], rule.get("resources") or []
        if GROUP in groups or ("batch" in groups and "jobs" in resources):
            return True
    return False


def loopback_webhooks(manifests: list[dict], port: int, ca_pem: bytes) -> list[dict]:
    """The release's webhook configurations, pointed at ``https://127.0.0.1:<port><path>``."""
    out = []
    for doc in manifests:
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        hooks = []
        for hook in doc.get("webhooks") or []:
            if not _keep_webhook(hook):
                continue
            path = hook["clientConfig"]["service"].get("path", "/")
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": base64.b64encode(ca_pem).decode()}
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


class Kueue:
    """Kueue on one `ControlPlane` (see the module docstring)."""

    def __init__(self, plane: controlplane.ControlPlane, directory: Path | None = None):
        self.plane = plane
        self.directory = directory or install_dir()
        self.state_dir = plane.state_dir / "kueue"
        self.webhook_port = 0
        self.health_port = 0

    def start(self, timeout_seconds: float = 120) -> None:
        absent = missing(self.directory)
        if absent:
            raise controlplane.ControlPlaneError(
                "Kueue not built: " + ", ".join(map(str, absent))
                + " missing (run `make cluster-build` or `bash tests/cluster/build_kueue.sh`)")
        deadline = time.monotonic() + timeout_seconds
        from kubernetes import client

        api = self.plane.api_client()
        core = client.CoreV1Api(api)
        try:
            core.create_namespace({"metadata": {"name": NAMESPACE}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        self._install_crds(api, deadline)

        self.state_dir.mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority(self.state_dir / "pki")
        serving = ca.issue("serving", "kueue-webhook", server_ips=("127.0.0.1",),
                           server_dns=("localhost",))
        certs = self.state_dir / "certs"
        certs.mkdir(exist_ok=True)
        shutil.copy(serving.cert, certs / "tls.crt")
        shutil.copy(serving.key, certs / "tls.key")

        self.webhook_port = controlplane.free_port()
        self.health_port = controlplane.free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{controlplane.free_port()}"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
            "clientConnection": {"qps": 50, "burst": 100},
        }
        config_path = self.state_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.plane._spawn("kueue", [
            str(self.directory / "bin" / "kueue"),
            f"--config={config_path}",
            f"--kubeconfig={self.plane.kubeconfig}",
            "--feature-gates=VisibilityOnDemand=false",
            "--zap-log-level=2",
        ], env={"KUEUE_METRICS_CERT_DIR": str(certs)})
        self.plane._wait_http("kueue", f"http://127.0.0.1:{self.health_port}/readyz", deadline)

        manifests = [d for d in yaml.safe_load_all((self.directory / "config" / "webhook.yaml")
                                                   .read_text()) if d]
        admission = client.AdmissionregistrationV1Api(api)
        for doc in loopback_webhooks(manifests, self.webhook_port, ca.cert_path.read_bytes()):
            create = (admission.create_mutating_webhook_configuration
                      if doc["kind"] == "MutatingWebhookConfiguration"
                      else admission.create_validating_webhook_configuration)
            create(doc)
        self._wait_webhook(api, deadline)
        log.info("kueue %s ready (webhooks on 127.0.0.1:%d)", version(), self.webhook_port)

    def _install_crds(self, api, deadline: float) -> None:
        from kubernetes import client

        ext = client.ApiextensionsV1Api(api)
        names = []
        for path in sorted((self.directory / "config" / "crd").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            names.append(crd["metadata"]["name"])
            try:
                ext.create_custom_resource_definition(crd)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        for name in names:
            while True:
                conds = ext.read_custom_resource_definition(name).status.conditions or []
                if any(c.type == "Established" and c.status == "True" for c in conds):
                    break
                if time.monotonic() > deadline:
                    raise controlplane.ControlPlaneError(f"CRD {name} not Established in time")
                time.sleep(0.2)

    def _wait_webhook(self, api, deadline: float) -> None:
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        probe = {"apiVersion": API_VERSION, "kind": "ResourceFlavor",
                 "metadata": {"name": "kubetrain-webhook-probe"}}
        last = ""
        while time.monotonic() < deadline:
            self.plane._check_alive("kueue")
            try:
                custom.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", probe,
                                                    dry_run="All")
                return
            except client.ApiException as exc:
                last = f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}"
            time.sleep(0.5)
        raise controlplane.ControlPlaneError(f"Kueue's webhooks not answering in time ({last}); "
                                             f"log tail:\n{self.plane.log_tail('kueue')}")


def apply_objects(api, docs: list[dict], namespace: str | None = None) -> list[dict]:
    """Create (or replace) Kueue objects; LocalQueues go to ``namespace`` unless they name one."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    out = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        plural = PLURALS[kind]
        if kind in NAMESPACED:
            ns = doc["metadata"].get("namespace") or namespace
            try:
                out.append(custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, doc))
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                out.append(custom.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name,
                                                                 doc))
        else:
            try:
                out.append(custom.create_cluster_custom_object(GROUP, VERSION, plural, doc))
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                out.append(custom.patch_cluster_custom_object(GROUP, VERSION, plural, name, doc))
    return out


def queues(cluster_queue: str, namespace: str, local_queue: str, *, gpus: int, cpu: str = "16",
           memory: str = "64Gi", ephemeral_storage: str = "200Gi", flavor: str = "default-flavor",
           preemption: bool = False) -> list[dict]:
    """A ResourceFlavor, a ClusterQueue for ``namespace`` only with the given quota (every
    resource a kubetrain pod requests), and its LocalQueue."""
    cq_spec: dict = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "resourceGroups": [{
            "coveredResources": ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"],
            "flavors": [{"name": flavor, "resources": [
                {"name": "cpu", "nominalQuota": cpu},
                {"name": "memory", "nominalQuota": memory},
                {"name": "ephemeral-storage", "nominalQuota": ephemeral_storage},
                {"name": "nvidia.com/gpu", "nominalQuota": gpus},
            ]}],
        }],
    }
    if preemption:
        cq_spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return [
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {"apiVersion": API_VERSION, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": cq_spec},
        {"apiVersion": API_VERSION, "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ]


def workloads_of(api, namespace: str, job_name: str) -> list[dict]:
    """The Workloads Kueue made for the Job ``job_name`` (owned by it)."""
    from kubernetes import client

    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloads")["items"]
    return [w for w in items if any(o.get("kind") == "Job" and o.get("name") == job_name
                                    for o in w["metadata"].get("ownerReferences") or [])]


def condition(obj: dict, kind: str) -> str:
    """The status ("True", "False") of a condition of ``obj``, "" when it has none."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond.get("status", "")
    return ""
