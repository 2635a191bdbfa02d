"""The test kubelet's pod runner: one thread per pod runs its containers as local processes.

Init containers run one after another, then all containers at once; restartPolicy OnFailure
restarts a failed container in place (restartCount grows), Never does not. Each process is the
container's ``command + args`` (``python``/``python3`` is this kubelet's interpreter, so
``python -m trainer`` runs the project's own code), in its own session, killed with the kubelet
(PR_SET_PDEATHSIG). Its real exit code goes into the pod status, so the real Job controller sees
the trainer's real exit codes; with ``terminationMessagePolicy: FallbackToLogsOnError`` a failed
container's last log lines become its termination message.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from kubelet_volumes import PodFailed, PodSetup, expand_references, rewrite_paths
from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("kubelet")

PYTHON_NAMES = re.compile(r"^python(3(\.\d+)?)?$")
_libc = ctypes.CDLL(None, use_errno=True)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _child_setup() -> None:  # between fork and exec: die with the kubelet thread that forked
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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

    def __init__(self, core: client.CoreV1Api, state_dir: Path, pod: client.V1Pod, loopback_port):
        super().__init__(name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}", daemon=True)
        self.pod = pod
        self.core = core
        meta = pod.metadata
        self.key = (meta.namespace, meta.name)
        self.dir = state_dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}"
        self.setup = PodSetup(core, pod, self.dir, state_dir / "claims", loopback_port)
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
        self.signal_all(signal.SIGTERM)
        timer = threading.Timer(self.grace_seconds, self.signal_all, args=(signal.SIGKILL,))
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
            self.patch_status({"phase": "Failed", "reason": "KubeletError",
                                "message": "the test kubelet failed; see its log",
                                "startTime": self.start_time})
        finally:
            self.finished.set()
            if self.stopping.is_set():
                self.delete_finally()

    def _prepare(self) -> bool:
        """Volumes and launch commands; like a kubelet, a pod whose ConfigMap or Secret is
        missing waits (CreateContainerConfigError) and is tried again. False: deleted first."""
        spec = self.pod.spec
        while True:
            try:
                (self.dir / "logs").mkdir(parents=True, exist_ok=True)
                volumes = self.setup.volumes()
                for c in (spec.init_containers or []) + spec.containers:
                    self.launches[c.name] = self._launch(c, self.setup.mounts(c, volumes))
                return True
            except PodFailed as exc:
                log.warning("pod %s/%s cannot start: %s", *self.key, exc.message)
                waiting = {"waiting": {"reason": exc.reason, "message": exc.message}}
                self.patch_status({
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
        env = self.setup.environment(container, mounts)
        argv = [expand_references(a, env) for a in container.command + (container.args or [])]
        argv = [self.setup.map_addresses(rewrite_paths(a, mounts)) for a in argv]
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
                self.signal_all(signal.SIGTERM)
        return run

    def signal_all(self, sig: int) -> None:
        with self.lock:
            runs = [r for rs in self.runs.values() for r in rs]
        for run in runs:
            if run.proc is not None and run.exit_code is None:
                try:
                    os.killpg(run.proc.pid, sig)
                except ProcessLookupError:
                    pass

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
        self.patch_status({
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

        self.patch_status({
            "phase": phase,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": self._conditions(ready=False, reason="PodCompleted"),
            "initContainerStatuses": self._container_statuses(spec.init_containers or [],
                                                              message_for),
            "containerStatuses": self._container_statuses(spec.containers, message_for),
        })
        log.info("pod %s/%s %s", *self.key, phase)

    def patch_status(self, status: dict) -> None:
        try:
            self.core.patch_namespaced_pod_status(*reversed(self.key), {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s: status update failed: %s %s", *self.key, exc.status,
                            exc.body)

    def delete_finally(self) -> None:
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


def _tail(path: Path, lines: int, max_bytes: int) -> str:
    try:
        data = path.read_bytes()[-max_bytes:]
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
