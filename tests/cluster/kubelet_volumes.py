"""The test kubelet's pod setup: volumes, environment variables and the downward API.

A container sees the pod's volumes as directories under the pod's directory (a PVC under the
kubelet's state, so it outlives the pod). There is no mount namespace, so every argument,
``--flag=`` value, env value or workingDir that starts with a volume's mountPath is rewritten
to the local directory (``rewrite_paths``); ``$(VAR)`` references are expanded as Kubernetes
does (``expand_references``). A missing ConfigMap, Secret or key raises ``PodFailed``, which the
pod runner reports as ``CreateContainerConfigError`` and retries, like a real kubelet.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

# Variables of the kubelet's own environment a container inherits (the rest comes from the pod).
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                   "PYTHONPATH")  # PYTHONPATH: a worktree's own code, not the editable install's


class PodFailed(Exception):
    """The pod cannot start yet (missing ConfigMap, Secret or key, unsupported volume)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def expand_references(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$` escapes a `$`."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def map_pod_addresses(value: str, namespace: str, subdomain: str, port_of) -> str:
    """``<host>.<subdomain>[.<namespace>[.svc[.cluster.local]]]:<port>`` -> ``127.0.0.1:P`` with
    ``P = port_of(host, port)`` (no pod network here: see kubelet.py's docstring)."""
    pattern = re.compile(rf"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.{re.escape(subdomain)}"
                         rf"(?:\.{re.escape(namespace)}(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)\b")
    return pattern.sub(lambda m: f"127.0.0.1:{port_of(m.group(1), int(m.group(2)))}", value)


def rewrite_paths(value: str, mounts: list[tuple[str, Path]]) -> str:
    """Map a value that is, or ends with `=`, a path under a mountPath to the local directory."""
    prefix, sep, path = value.rpartition("=") if "=" in value else ("", "", value)
    for mount_path, local in mounts:  # longest mountPath first
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return prefix + sep + str(local) + path[len(mount_path.rstrip("/")):]
    return value


class PodSetup:
    """Builds the local view of one pod: its volumes, each container's mounts and environment."""

    def __init__(self, core: client.CoreV1Api, pod: client.V1Pod, pod_dir: Path, claims_dir: Path,
                 loopback_port):
        self.core = core
        self.pod = pod
        self.dir = pod_dir
        self.claims_dir = claims_dir
        self.loopback_port = loopback_port  # (namespace, subdomain, host, port) -> local port

    def environment(self, container, mounts: list[tuple[str, Path]]) -> dict[str, str]:
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update(HOME=str(home), HOSTNAME=self.pod.metadata.name)
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.config_map_ref:
                data = self._config_map(source.config_map_ref.name,
                                        source.config_map_ref.optional)
                env.update({prefix + k: v for k, v in (data.data or {}).items()})
            if source.secret_ref:
                data = self._secret(source.secret_ref.name, source.secret_ref.optional)
                env.update({prefix + k: base64.b64decode(v).decode()
                            for k, v in (data.data or {}).items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = expand_references(var.value or "", env)
            else:
                value = self._env_value_from(var.name, var.value_from, container)
                if value is not None:
                    env[var.name] = value
        if any(mount_path == "/tmp" for mount_path, _ in mounts):
            env.setdefault("TMPDIR", "/tmp")
        return {k: self.map_addresses(rewrite_paths(v, mounts)) for k, v in env.items()}

    def map_addresses(self, value: str) -> str:
        """Peer addresses under the pod's subdomain, as local ports (see ``map_pod_addresses``)."""
        subdomain = self.pod.spec.subdomain
        if not subdomain:
            return value
        namespace = self.pod.metadata.namespace
        return map_pod_addresses(value, namespace, subdomain,
                                 lambda host, port: self.loopback_port(namespace, subdomain, host, port))

    def _env_value_from(self, name: str, source, container) -> str | None:
        if source.field_ref:
            return self.field(source.field_ref.field_path)
        if source.config_map_key_ref:
            ref = source.config_map_key_ref
            data = self._config_map(ref.name, ref.optional).data
            return _key_value(name, "ConfigMap", data, ref, lambda value: value)
        if source.secret_key_ref:
            ref = source.secret_key_ref
            data = self._secret(ref.name, ref.optional).data
            return _key_value(name, "Secret", data, ref, lambda value: base64.b64decode(value).decode())
        if source.resource_field_ref:
            ref = source.resource_field_ref
            resources = container.resources
            limits = (resources.limits or {}) if resources else {}
            return str(limits.get(ref.resource.split(".", 1)[1], "0"))
        return None

    def field(self, path: str) -> str:
        meta = self.pod.metadata
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.pod.spec.node_name,
            "spec.serviceAccountName": self.pod.spec.service_account_name or "",
            "status.hostIP": "127.0.0.1",
            "status.podIP": "127.0.0.1",
        }
        if path in simple:
            return simple[path] or ""
        match = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
        if match:
            values = (meta.labels if match.group(1) == "labels" else meta.annotations) or {}
            return values.get(match.group(2), "")
        raise PodFailed("CreateContainerConfigError", f"unsupported fieldRef {path}")

    def _config_map(self, name: str, optional: bool | None):
        return self._read("ConfigMap", self.core.read_namespaced_config_map, client.V1ConfigMap,
                          name, optional)

    def _secret(self, name: str, optional: bool | None):
        return self._read("Secret", self.core.read_namespaced_secret, client.V1Secret, name,
                          optional)

    def _read(self, kind: str, read, empty, name: str, optional: bool | None):
        """A ConfigMap or Secret of the pod's namespace; an empty one if missing and optional."""
        try:
            return read(name, self.pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return empty(data={})
            raise PodFailed("CreateContainerConfigError", f"{kind} {name}: {exc.reason}") from None

    def volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for vol in self.pod.spec.volumes or []:
            local = self.dir / "volumes" / vol.name
            if vol.host_path:
                volumes[vol.name] = Path(vol.host_path.path)
                continue
            if vol.persistent_volume_claim:
                local = (self.claims_dir / self.pod.metadata.namespace
                         / vol.persistent_volume_claim.claim_name)
                local.mkdir(parents=True, exist_ok=True)
                volumes[vol.name] = local
                continue
            local.mkdir(parents=True, exist_ok=True)
            volumes[vol.name] = local
            if vol.empty_dir:
                pass
            elif vol.config_map:
                cm = self._config_map(vol.config_map.name, vol.config_map.optional)
                self._write_items(local, _config_map_files(cm), vol.config_map.items,
                                  vol.config_map.default_mode)
            elif vol.secret:
                secret = self._secret(vol.secret.secret_name, vol.secret.optional)
                self._write_items(local, _secret_files(secret), vol.secret.items,
                                  vol.secret.default_mode)
            elif vol.downward_api:
                self._write_items(local, self._downward_files(vol.downward_api.items), None,
                                  vol.downward_api.default_mode)
            elif vol.projected:
                for source in vol.projected.sources or []:
                    self._write_projection(local, source, vol.projected.default_mode)
            else:
                raise PodFailed("CreateContainerConfigError",
                                f"volume {vol.name}: type not supported by the test kubelet")
        return volumes

    def _write_projection(self, local: Path, source, mode: int | None) -> None:
        if source.service_account_token:
            token = source.service_account_token
            request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[token.audience] if token.audience else [],
                expiration_seconds=token.expiration_seconds or 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=self.pod.metadata.name,
                    uid=self.pod.metadata.uid)))
            response = self.core.create_namespaced_service_account_token(
                self.pod.spec.service_account_name or "default", self.pod.metadata.namespace,
                request)
            self._write_items(local, {token.path: response.status.token.encode()}, None, mode)
        elif source.config_map:
            cm = self._config_map(source.config_map.name, source.config_map.optional)
            self._write_items(local, _config_map_files(cm), source.config_map.items, mode)
        elif source.secret:
            secret = self._secret(source.secret.name, source.secret.optional)
            self._write_items(local, _secret_files(secret), source.secret.items, mode)
        elif source.downward_api:
            self._write_items(local, self._downward_files(source.downward_api.items), None, mode)

    def _downward_files(self, items) -> dict[str, bytes]:
        files = {}
        for item in items or []:
            if item.field_ref:
                files[item.path] = self.field(item.field_ref.field_path).encode()
        return files

    @staticmethod
    def _write_items(local: Path, files: dict[str, bytes], items, mode: int | None) -> None:
        if items:
            files = {item.path: files[item.key] for item in items if item.key in files}
        for rel, content in files.items():
            target = (local / rel).resolve()
            if local.resolve() not in target.parents:
                raise PodFailed("CreateContainerConfigError", f"volume item path {rel} escapes")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode if mode is not None else 0o644)

    def mounts(self, container, volumes: dict[str, Path]) -> list[tuple[str, Path]]:
        mounts = []
        for mount in container.volume_mounts or []:
            if mount.name not in volumes:
                raise PodFailed("CreateContainerConfigError",
                                f"container {container.name}: no volume {mount.name}")
            local = volumes[mount.name]
            if mount.sub_path:
                local = local / mount.sub_path
                if not local.exists():
                    local.mkdir(parents=True)
            mounts.append((mount.mount_path.rstrip("/") or "/", local))
        return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def _key_value(env_name: str, kind: str, data: dict | None, ref, decode) -> str | None:
    """The value of ``ref.key`` in a ConfigMap's or Secret's ``data``; None when absent and
    optional, PodFailed when absent and required."""
    data = data or {}
    if ref.key not in data and not ref.optional:
        raise PodFailed("CreateContainerConfigError",
                        f"env {env_name}: key {ref.key} not in {kind} {ref.name}")
    return decode(data[ref.key]) if ref.key in data else None


def _config_map_files(cm) -> dict[str, bytes]:
    files = {k: v.encode() for k, v in (cm.data or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
    return files


def _secret_files(secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
