"""Helpers for the tests against the local control plane (imported by tests/cluster/test_*)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import controlplane
import yaml
from kubernetes import client, utils, watch
from kubernetes.client.rest import ApiException

from jobs.render import render
from jobs.spec import load_spec
from trainer.config import parse_overrides

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "k8s" / "base"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
NODE_NAME = controlplane.NODE_NAME


@dataclass
class Kube:
    """Admin API clients for one test."""

    api: client.ApiClient
    core: client.CoreV1Api
    batch: client.BatchV1Api
    rbac: client.RbacAuthorizationV1Api


@dataclass
class Launcher:
    """Runs the launcher's CLI (`python -m jobs`) with a kubeconfig and a namespace."""

    kubeconfig: Path
    namespace: str

    def __call__(self, *args: str, timeout_seconds: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            [sys.executable, "-m", "jobs", *args, "--namespace", self.namespace],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_seconds,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`python -m jobs {' '.join(args)}` exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc


def local_overrides(spec, directory: Path) -> list[str]:
    """`--set` flags pointing every storage URI of a spec (data, output, promote_to) at
    builtin:digits and local directories under `directory`: nothing may reach a bucket."""
    flags = ["--set", "data=builtin:digits", "--set", f"output={directory / 'runs'}"]
    if spec.train.promote_to:
        flags += ["--set", f"promote_to={directory / 'serving'}"]
    return flags


def base_namespace_labels() -> dict[str, str]:
    """The labels of k8s/base's namespace (the restricted Pod Security Standard)."""
    return yaml.safe_load((BASE / "namespace.yaml").read_text())["metadata"]["labels"]


def apply_kubetrain_base(api: client.ApiClient, namespace: str) -> None:
    """k8s/base's ServiceAccounts, launcher Role and RoleBinding, in `namespace` (as
    `kubectl apply -k` would, with kustomize's namespace filled into the binding's subjects)."""
    for path in (BASE / "serviceaccounts.yaml", BASE / "launcher-rbac.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "RoleBinding":
                for subject in doc["subjects"]:
                    subject.setdefault("namespace", namespace)
            if doc["kind"] == "ClusterRoleBinding":  # one per namespace using the base
                doc["metadata"]["name"] += f"-{namespace}"
                for subject in doc["subjects"]:
                    subject["namespace"] = namespace
            try:
                utils.create_from_dict(api, doc, namespace=namespace)
            except utils.FailToCreateError as exc:  # a ClusterRole made for an earlier namespace
                if doc["kind"] != "ClusterRole" or any(e.status != 409 for e in exc.api_exceptions):
                    raise


def wait_for(what: str, list_func, namespace: str, check, *, timeout_seconds: float = 120,
             **selectors):
    """List, and watch for changes, until `check(items)` returns something truthy; return it.

    Fails the test with `what` after `timeout_seconds`.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        listed = list_func(namespace, **selectors)
        result = check(listed.items)
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_seconds:.0f}s waiting for {what}; "
                                 f"last seen: {[i.metadata.name for i in listed.items]}")
        stream = watch.Watch().stream(list_func, namespace,
                                      resource_version=listed.metadata.resource_version,
                                      timeout_seconds=max(1, int(min(remaining, 10))), **selectors)
        for _event in stream:
            break  # something changed: list again
        stream.close()


def job_pods(kube: Kube, namespace: str, job_name: str) -> list:
    pods = kube.core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}").items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


def exit_codes(pods) -> list[int | None]:
    codes = []
    for pod in pods:
        statuses = pod.status.container_statuses or []
        terminated = statuses[0].state.terminated if statuses else None
        codes.append(terminated.exit_code if terminated else None)
    return codes


def token_kubeconfig(control_plane, kube: Kube, namespace: str, service_account: str,
                     path: Path) -> Path:
    """A kubeconfig that authenticates as `service_account` (a TokenRequest token)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = kube.core.create_namespaced_service_account_token(
        service_account, namespace, request).status.token
    return controlplane.write_kubeconfig(
        path, control_plane.server, control_plane.pki_dir / "ca.crt", token=token,
        namespace=namespace, user=f"system:serviceaccount:{namespace}:{service_account}")


def submit_rendered(kube, namespace, output, change) -> str:
    """Render the kind example (local data and output), let `change(container, job)` edit it,
    create it with admin rights; returns the Job's name."""
    overrides = parse_overrides(["data=builtin:digits", f"output={output}", "epochs=1"])
    spec = load_spec(REPO / "examples" / "kind.yaml", overrides)
    config_map, job = render(spec, namespace)
    change(job["spec"]["template"]["spec"]["containers"][0], job)
    kube.core.create_namespaced_config_map(namespace, config_map)
    try:
        kube.batch.create_namespaced_job(namespace, job)
    except ApiException as exc:
        raise AssertionError(f"the API server refused the rendered Job: {exc.body}") from None
    return job["metadata"]["name"]
