"""A small test kubelet: runs the pods bound to its node as local processes.

It registers a Node (127.0.0.1, with cpu, memory, pods and nvidia.com/gpu capacity), watches
the pods the scheduler binds to it, and for each container runs `command + args` as a local
process with the pod's environment. It reports the process's real exit code in the pod status,
so the real Job controller sees the trainer's real exit codes, and it serves container logs
over HTTPS so `kubectl logs` / `read_namespaced_pod_log` work through the API server.

    python tests/cluster/kubelet.py --kubeconfig K --node-name N --port P \
        --tls-cert C --tls-key K --client-ca CA --state-dir D

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
import base64
import ctypes
import datetime
import http.server
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("kubelet")

PYTHON_NAMES = re.compile(r"^python(3(\.\d+)?)?$")
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                   "PYTHONPATH")  # PYTHONPATH: a worktree's own code, not the editable install's
_libc = ctypes.CDLL(None, use_errno=True)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _child_setup() -> None:  # between fork and exec: die with the kubelet thread that forked
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
    ``P = port_of(host, port)`` (see the module docstring: no pod network here)."""
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


class PodFailed(Exception):
    """The pod cannot start yet (missing ConfigMap, Secret or key, unsupported volume)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ContainerRun:
    """One run of one container: a process, its log file and its timestamps."""

    def __init__(self, name: str, log_path: Path, restart_count: int):
        self.name = name
        self.log_path = log_path
        self.restart_count = restart_count
        self.proc: subprocess.Popen | None = None
        self.started_at = ""
        self.finished_at = ""
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.reason = ""
        self.message = ""
        self.done = threading.Event()

    def state(self, message: str = "") -> dict:
        if self.exit_code is None:
            return {"running": {"startedAt": self.started_at}}
        terminated = {
            "exitCode": self.exit_code,
            "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": self.container_id,
        }
        if self.signal:
            terminated["signal"] = self.signal
        if message or self.message:
            terminated["message"] = message or self.message
        return {"terminated": terminated}

    @property
    def container_id(self) -> str:
        return f"kubetrain://{self.proc.pid if self.proc else 0}"


class PodRunner(threading.Thread):
    """Runs one pod to its end and keeps its pod status up to date."""

    def __init__(self, kubelet: Kubelet, pod: client.V1Pod):
        super().__init__(name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.core = kubelet.core
        meta = pod.metadata
        self.key = (meta.namespace, meta.name)
        self.dir = kubelet.state_dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}"
        self.runs: dict[str, list[ContainerRun]] = {}
        self.launches: dict[str, tuple[list[str], dict, Path]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.grace_seconds = 30.0
        self.finished = threading.Event()
        self.start_time = now()

    # -- public (called from other threads) ------------------------------------------------

    def terminate(self, grace_seconds: float) -> None:
        """Stop the pod: SIGTERM every running container, SIGKILL after the grace period."""
        if self.stopping.is_set():
            return
        self.grace_seconds = max(grace_seconds, 0)
        self.stopping.set()
        self._signal_all(signal.SIGTERM)
        timer = threading.Timer(self.grace_seconds, self._signal_all, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def latest_run(self, container: str, previous: bool = False) -> ContainerRun | None:
        with self.lock:
            runs = self.runs.get(container, [])
        index = -2 if previous else -1
        return runs[index] if len(runs) >= abs(index) else None

    # -- the pod's life --------------------------------------------------------------------

    def run(self) -> None:
        try:
            if self._prepare():
                self._run()
        except Exception:  # report, never leave the pod hanging in Running
            log.exception("pod %s/%s: kubelet error", *self.key)
            self._patch_status({"phase": "Failed", "reason": "KubeletError",
                                "message": "the test kubelet failed; see its log",
                                "startTime": self.start_time})
        finally:
            self.finished.set()
            if self.stopping.is_set():
                self._delete_finally()

    def _prepare(self) -> bool:
        """Volumes and launch commands; like a kubelet, a pod whose ConfigMap or Secret is
        missing waits (CreateContainerConfigError) and is tried again. False: deleted first."""
        spec = self.pod.spec
        while True:
            try:
                (self.dir / "logs").mkdir(parents=True, exist_ok=True)
                volumes = self._materialize_volumes()
                for c in (spec.init_containers or []) + spec.containers:
                    self.launches[c.name] = self._launch(c, self._container_mounts(c, volumes))
                return True
            except PodFailed as exc:
                log.warning("pod %s/%s cannot start: %s", *self.key, exc.message)
                waiting = {"waiting": {"reason": exc.reason, "message": exc.message}}
                self._patch_status({
                    "phase": "Pending", "hostIP": "127.0.0.1", "startTime": self.start_time,
                    "containerStatuses": [
                        {"name": c.name, "image": c.image, "imageID": "", "ready": False,
                         "restartCount": 0, "started": False, "state": waiting}
                        for c in spec.containers],
                })
            if self.stopping.wait(2):
                return False

    def _run(self) -> None:
        spec = self.pod.spec
        for init in spec.init_containers or []:
            code = self._run_container(init, spec.restart_policy, init=True)
            if code != 0 or self.stopping.is_set():
                self._finish()
                return
        self._patch_running()
        threads = [threading.Thread(target=self._run_container, args=(c, spec.restart_policy),
                                    daemon=True) for c in spec.containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._finish()

    def _launch(self, container, mounts: list[tuple[str, Path]]) -> tuple[list[str], dict, Path]:
        """argv, environment and working directory of a container, in local terms."""
        if not container.command:
            raise PodFailed("CreateContainerError",
                            f"container {container.name}: the test kubelet needs an explicit "
                            "command (it cannot read the image's entrypoint)")
        env = self._environment(container, mounts)
        argv = [expand_references(a, env) for a in container.command + (container.args or [])]
        argv = [self._map_addresses(rewrite_paths(a, mounts)) for a in argv]
        if PYTHON_NAMES.match(argv[0]):
            argv[0] = sys.executable
        cwd = self.dir
        if container.working_dir:
            local = rewrite_paths(container.working_dir, mounts)
            if local != container.working_dir:
                cwd = Path(local)
        return argv, env, cwd

    def _run_container(self, container, restart_policy: str, init: bool = False) -> int:
        """Run a container until it ends for good; returns its last exit code."""
        restart_count = 0
        while True:
            run = self._start_process(container.name, restart_count)
            if not init:
                self._patch_running()
            if run.proc is not None:
                code = run.proc.wait()
                run.exit_code = code if code >= 0 else 128 - code
                run.signal = -code if code < 0 else None
            run.finished_at = now()
            run.done.set()
            log.info("pod %s/%s container %s exited with %d", *self.key, container.name,
                     run.exit_code)
            retry = restart_policy == "Always" or (restart_policy == "OnFailure"
                                                   and run.exit_code != 0)
            if not retry or self.stopping.is_set():
                return run.exit_code
            restart_count += 1
            if self.stopping.wait(min(10, 2 ** restart_count)):
                return run.exit_code

    def _start_process(self, name: str, restart_count: int) -> ContainerRun:
        argv, env, cwd = self.launches[name]
        run = ContainerRun(name, self.dir / "logs" / f"{name}.{restart_count}.log", restart_count)
        run.started_at = now()
        with run.log_path.open("ab") as out:
            try:
                run.proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_child_setup,  # noqa: PLW1509 (prctl only, no locks taken)
                )
            except OSError as exc:  # what a runtime reports as StartError
                out.write(f"cannot start {argv[0]}: {exc}\n".encode())
                run.exit_code, run.reason, run.message = 127, "StartError", str(exc)
        with self.lock:
            self.runs.setdefault(name, []).append(run)
        if run.proc is not None:
            log.info("pod %s/%s container %s started (pid %d): %s", *self.key, name,
                     run.proc.pid, " ".join(argv))
            if self.stopping.is_set():  # deleted while starting
                self._signal_all(signal.SIGTERM)
        return run

    def _signal_all(self, sig: int) -> None:
        with self.lock:
            runs = [r for rs in self.runs.values() for r in rs]
        for run in runs:
            if run.proc is not None and run.exit_code is None:
                try:
                    os.killpg(run.proc.pid, sig)
                except ProcessLookupError:
                    pass

    # -- environment and volumes -----------------------------------------------------------

    def _environment(self, container, mounts: list[tuple[str, Path]]) -> dict[str, str]:
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
        return {k: self._map_addresses(rewrite_paths(v, mounts)) for k, v in env.items()}

    def _map_addresses(self, value: str) -> str:
        subdomain = self.pod.spec.subdomain
        if not subdomain:
            return value
        namespace = self.pod.metadata.namespace
        return map_pod_addresses(value, namespace, subdomain,
                                 lambda host, port: self.kubelet.loopback_port(namespace, subdomain, host, port))

    def _env_value_from(self, name: str, source, container) -> str | None:
        if source.field_ref:
            return self._field(source.field_ref.field_path)
        if source.config_map_key_ref:
            ref = source.config_map_key_ref
            data = (self._config_map(ref.name, ref.optional).data or {})
            if ref.key not in data and not ref.optional:
                raise PodFailed("CreateContainerConfigError",
                                f"env {name}: key {ref.key} not in ConfigMap {ref.name}")
            return data.get(ref.key)
        if source.secret_key_ref:
            ref = source.secret_key_ref
            data = (self._secret(ref.name, ref.optional).data or {})
            if ref.key not in data and not ref.optional:
                raise PodFailed("CreateContainerConfigError",
                                f"env {name}: key {ref.key} not in Secret {ref.name}")
            return base64.b64decode(data[ref.key]).decode() if ref.key in data else None
        if source.resource_field_ref:
            ref = source.resource_field_ref
            resources = container.resources
            limits = (resources.limits or {}) if resources else {}
            return str(limits.get(ref.resource.split(".", 1)[1], "0"))
        return None

    def _field(self, path: str) -> str:
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
        try:
            return self.core.read_namespaced_config_map(name, self.pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return client.V1ConfigMap(data={})
            raise PodFailed("CreateContainerConfigError",
                            f"ConfigMap {name}: {exc.reason}") from None

    def _secret(self, name: str, optional: bool | None):
        try:
            return self.core.read_namespaced_secret(name, self.pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return client.V1Secret(data={})
            raise PodFailed("CreateContainerConfigError", f"Secret {name}: {exc.reason}") from None

    def _materialize_volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for vol in self.pod.spec.volumes or []:
            local = self.dir / "volumes" / vol.name
            if vol.host_path:
                volumes[vol.name] = Path(vol.host_path.path)
                continue
            if vol.persistent_volume_claim:
                local = (self.kubelet.state_dir / "claims" / self.pod.metadata.namespace
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
                files[item.path] = self._field(item.field_ref.field_path).encode()
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

    def _container_mounts(self, container, volumes: dict[str, Path]) -> list[tuple[str, Path]]:
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

    # -- status ----------------------------------------------------------------------------

    def _container_statuses(self, containers, message_for=None) -> list[dict]:
        statuses = []
        for c in containers:
            run = self.latest_run(c.name)
            status = {"name": c.name, "image": c.image, "imageID": "",
                      "restartCount": 0, "ready": False, "started": False}
            if run is None:
                status["state"] = {"waiting": {"reason": "PodInitializing"}}
            else:
                message = message_for(run) if message_for else ""
                status.update(restartCount=run.restart_count, containerID=run.container_id,
                              state=run.state(message), ready=run.exit_code is None,
                              started=run.exit_code is None)
                previous = self.latest_run(c.name, previous=True)
                if previous is not None:
                    status["lastState"] = previous.state()
            statuses.append(status)
        return statuses

    def _conditions(self, ready: bool, reason: str = "") -> list[dict]:
        t = now()
        flag = "True" if ready else "False"
        extra = {"reason": reason} if reason else {}
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": t, **extra},
            {"type": "Ready", "status": flag, "lastTransitionTime": t, **extra},
        ]

    def _patch_running(self) -> None:
        spec = self.pod.spec
        self._patch_status({
            "phase": "Running",
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": self._conditions(ready=True),
            "initContainerStatuses": self._container_statuses(spec.init_containers or []),
            "containerStatuses": self._container_statuses(spec.containers),
        })

    def _finish(self) -> None:
        spec = self.pod.spec
        codes = []
        for c in spec.containers:
            run = self.latest_run(c.name)
            codes.append(run.exit_code if run is not None else 1)
        for c in spec.init_containers or []:
            run = self.latest_run(c.name)
            if run is not None and run.exit_code != 0:
                codes.append(run.exit_code)
        phase = "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"

        def message_for(run: ContainerRun) -> str:
            if run.exit_code == 0:
                return ""
            container = next(c for c in spec.containers + (spec.init_containers or [])
                             if c.name == run.name)
            if container.termination_message_policy == "FallbackToLogsOnError":
                return _tail(run.log_path, lines=80, max_bytes=2048)
            return ""

        self._patch_status({
            "phase": phase,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": self._conditions(ready=False, reason="PodCompleted"),
            "initContainerStatuses": self._container_statuses(spec.init_containers or [],
                                                              message_for),
            "containerStatuses": self._container_statuses(spec.containers, message_for),
        })
        log.info("pod %s/%s %s", *self.key, phase)

    def _patch_status(self, status: dict) -> None:
        try:
            self.core.patch_namespaced_pod_status(*reversed(self.key), {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s: status update failed: %s %s", *self.key, exc.status,
                            exc.body)

    def _delete_finally(self) -> None:
        """After a graceful deletion: remove the pod object for good (what a kubelet does)."""
        try:
            self.core.delete_namespaced_pod(
                self.key[1], self.key[0], grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=self.pod.metadata.uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", *self.key, exc.status)


def _config_map_files(cm) -> dict[str, bytes]:
    files = {k: v.encode() for k, v in (cm.data or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
    return files


def _secret_files(secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _tail(path: Path, lines: int, max_bytes: int) -> str:
    try:
        data = path.read_bytes()[-max_bytes:]
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


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
                threading.Thread(target=PodRunner(self, pod)._delete_finally, daemon=True).start()
            return
        if runner is not None or pod.status.phase in ("Succeeded", "Failed"):
            return
        if pod.status.phase == "Running":  # started by an earlier kubelet: its process is gone
            PodRunner(self, pod)._patch_status({"phase": "Failed", "reason": "KubeletRestarted"})
            return
        runner = PodRunner(self, pod)
        with self.lock:
            self.runners[uid] = runner
            self.by_name[runner.key] = runner
        runner.start()

    def stop_all(self, grace_seconds: float = 5) -> None:
        """On kubelet shutdown: end every pod process (SIGTERM, then SIGKILL)."""
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner._signal_all(signal.SIGTERM)
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
            runner._signal_all(signal.SIGKILL)

    # -- logs ------------------------------------------------------------------------------

    def serve(self, ca_file: str) -> http.server.ThreadingHTTPServer:
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                log.debug("http: " + fmt, *args)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/healthz":
                    self._reply(200, b"ok")
                    return
                if not self.connection.getpeercert():
                    self._reply(401, b"client certificate required")
                    return
                parts = url.path.strip("/").split("/")
                if len(parts) == 4 and parts[0] == "containerLogs":
                    kubelet.serve_logs(self, parts[1], parts[2], parts[3],
                                       urllib.parse.parse_qs(url.query))
                else:
                    self._reply(404, b"not found")

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.args.port), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.args.tls_cert, self.args.tls_key)
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
        return server

    def serve_logs(self, handler, namespace: str, pod: str, container: str, query) -> None:
        def flag(name: str) -> bool:
            return query.get(name, ["false"])[0] == "true"

        with self.lock:
            runner = self.by_name.get((namespace, pod))
        run = runner.latest_run(container, previous=flag("previous")) if runner else None
        if run is None:
            handler._reply(404, f"no logs for {namespace}/{pod}/{container}".encode())
            return
        data = run.log_path.read_bytes()
        position = len(data)
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"][0]):]) if lines else b""
        limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        sent = 0

        def send(chunk: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                chunk = chunk[: limit - sent]
            handler.wfile.write(chunk)
            handler.wfile.flush()
            sent += len(chunk)
            return limit is None or sent < limit

        try:
            if not send(data) or not flag("follow"):
                return
            with run.log_path.open("rb") as f:
                f.seek(position)
                while True:
                    finished = run.done.is_set()  # read before, so no last line is missed
                    chunk = f.read(65536)
                    if chunk:
                        if not send(chunk):
                            return
                    elif finished:
                        return
                    else:
                        run.done.wait(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return


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
        kubelet.serve(args.client_ca)
        kubelet.run()
    finally:
        log.info("kubelet stopping: ending all pod processes")
        kubelet.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
