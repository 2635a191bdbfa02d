"""The one module that talks to the Kubernetes API.

``connect()`` builds a ``Cluster`` from a kubeconfig (file and context, like kubectl's flags)
or, inside a pod, from the in-cluster service account. Nothing connects at import time.
Every method takes and returns plain JSON dicts (the API's own camelCase shape, the same shape
``render`` produces), so the logic in ``submit``/``follow`` is tested on dicts, and every API
failure surfaces as one of a few exceptions:

    NotFound     the object (or namespace) does not exist
    Conflict     it already exists, or changed under us
    Forbidden    RBAC said no (the launcher's Role is in k8s/base/launcher-rbac.yaml)
    Gone         a watch's resourceVersion is too old: list again
    Unreachable  no answer (connection refused or reset, a timeout) or a 429/5xx: the API server
                 is restarting or overloaded. Reads (get, list, events) retry it for up to
                 ``outage_seconds`` (5 minutes) before it surfaces; watches and log streams that
                 break end, and their callers (``wait``, ``logs -f``) look again.
    ClusterError anything else (bad kubeconfig, a server error that retrying cannot fix)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

log = logging.getLogger(__name__)

IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
REQUEST_TIMEOUT_SECONDS = 30  # one ordinary API call; watches and log streams set their own
FIELD_MANAGER = "kubetrain"  # server-side apply: the owner of the fields submit sets
OUTAGE_SECONDS = 300  # how long reads retry an unreachable API server (a restart takes seconds)
FIRST_CONTACT_SECONDS = 30  # ... when it never answered yet (a wrong address fails sooner)
RETRY_MAX_DELAY_SECONDS = 5.0
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)  # a restarting or overloaded API server
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
KUEUE_PLURALS = {"Workload": "workloads", "LocalQueue": "localqueues", "ClusterQueue": "clusterqueues"}


class ClusterError(Exception):
    """The API call failed; the message says what to do."""


class KubeconfigError(ClusterError):
    """The kubeconfig (or in-cluster config) cannot be loaded: a usage error, exit 2."""


class NotFound(ClusterError):
    pass


class Conflict(ClusterError):
    pass


class Forbidden(ClusterError):
    pass


class Gone(ClusterError):
    pass


class Unreachable(ClusterError):
    """No answer, or an answer that says "try again" (429, 5xx)."""


def _cause(exc: Exception) -> str:
    """The short reason of a urllib3/socket error ("[Errno 111] Connection refused"), not the
    pool's repr with object addresses."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")(]*", text)
    if errno:
        return errno.group(0).strip().rstrip(":")
    reason = getattr(exc, "reason", None)
    return " ".join(str(reason or text or type(exc).__name__).split())[:200]


def _translate(exc: Exception, what: str) -> ClusterError:
    """One of our exceptions for a kubernetes-client or urllib3 exception."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            message = json.loads(exc.body or "{}").get("message", message)
        except (ValueError, AttributeError):
            pass
        if exc.status == 404:
            return NotFound(f"{what}: not found ({message})")
        if exc.status == 409:
            return Conflict(f"{what}: {message}")
        if exc.status == 403:
            return Forbidden(f"{what}: forbidden: {message} (the launcher needs the Role in "
                             "k8s/base/launcher-rbac.yaml)")
        if exc.status == 410:
            return Gone(f"{what}: {message}")
        if exc.status == 401:
            return ClusterError(f"{what}: unauthorized: the kubeconfig's credentials were refused")
        if exc.status in TRANSIENT_STATUSES or not exc.status:
            return Unreachable(f"{what}: API error {exc.status}: {' '.join(str(message).split())[:200]}")
        return ClusterError(f"{what}: API error {exc.status}: {message}")
    return Unreachable(f"{what}: cannot reach the API server: {_cause(exc)}")


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> dict:
    """Call a kubernetes-client method and return the response body as a dict."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_SECONDS)
    try:
        resp = func(*args, _preload_content=False, **kwargs)
        return json.loads(resp.data or b"{}")
    except (ApiException, HTTPError, OSError) as exc:
        raise _translate(exc, what) from None


def _raw_get(api_client: Any, path: str, _preload_content: bool = False,
             _request_timeout: Any = None) -> Any:
    """GET ``path`` (an aggregated API the client has no method for); ApiException on >= 400."""
    from kubernetes.client.exceptions import ApiException

    method, url, headers, body, post = api_client.param_serialize(
        "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api_client.call_api(method, url, headers, body, post, _request_timeout=_request_timeout)
    resp.read()
    if resp.status >= 400:
        raise ApiException(status=resp.status, reason=resp.reason, body=resp.data)
    return resp


@dataclass
class Cluster:
    """API clients for one cluster, and the namespace its config points at."""

    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api
    default_namespace: str
    host: str
    custom: Any = None  # kubernetes.client.CustomObjectsApi (Kueue's objects)
    outage_seconds: float = OUTAGE_SECONDS
    notify: Callable[[str], None] = lambda line: None  # a line when it goes down / comes back
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _down_since: float | None = field(default=None, repr=False)
    _answered: bool = field(default=False, repr=False)
    _delay: float = field(default=0.5, repr=False)

    # -- riding out an API server restart ---------------------------------------------------

    def _read(self, what: str, func: Any, *args: Any, **kwargs: Any) -> dict:
        """``_call`` for an idempotent read, retried while the API server is unreachable."""
        while True:
            try:
                result = _call(what, func, *args, **kwargs)
            except Unreachable as exc:
                self.wait_out(exc)
                continue
            self.reachable()
            return result

    def wait_out(self, exc: Unreachable) -> None:
        """Pause before trying again after ``exc`` (backing off to 5 s); re-raise it when the
        API server has been unreachable for ``outage_seconds``."""
        now = self.clock()
        bound = self.outage_seconds if self._answered else min(self.outage_seconds, FIRST_CONTACT_SECONDS)
        if self._down_since is None:
            self._down_since, self._delay = now, 0.5
            self.notify(f"warning: {exc}; retrying for up to {int(bound)}s "
                        "(is the API server restarting?)")
        down = now - self._down_since
        if down >= bound:
            raise Unreachable(f"{exc} (unreachable for {int(down)}s; gave up)") from None
        self.sleep(min(self._delay, bound - down))
        self._delay = min(self._delay * 2, RETRY_MAX_DELAY_SECONDS)

    def reachable(self) -> None:
        """An answer came: the outage, if any, is over."""
        self._answered = True
        if self._down_since is not None:
            self.notify(f"API server reachable again after {self.clock() - self._down_since:.0f}s")
            self._down_since = None

    # -- single objects -------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict:
        what = f"{kind.lower()} {namespace}/{name}"
        read = {"Job": self.batch.read_namespaced_job,
                "CronJob": self.batch.read_namespaced_cron_job,
                "ConfigMap": self.core.read_namespaced_config_map,
                "Service": self.core.read_namespaced_service,
                "ServiceAccount": self.core.read_namespaced_service_account,
                "Secret": self.core.read_namespaced_secret,
                "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
                "Pod": self.core.read_namespaced_pod}[kind]
        return self._read(what, read, name, namespace)

    def create(self, namespace: str, manifest: dict, dry_run: bool = False) -> dict:
        """Create ``manifest``; with ``dry_run`` the API server validates it and stores nothing."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        create = {"Job": self.batch.create_namespaced_job,
                  "CronJob": self.batch.create_namespaced_cron_job,
                  "ConfigMap": self.core.create_namespaced_config_map,
                  "Service": self.core.create_namespaced_service}[kind]
        extra = {"dry_run": "All"} if dry_run else {}
        return _call(f"create {kind.lower()} {namespace}/{name}", create, namespace, manifest, **extra)

    def apply(self, namespace: str, manifest: dict, dry_run: bool = False) -> dict:
        """Server-side apply (``kubectl apply --server-side``): the API server merges the fields
        kubetrain manages into the live object, keeping what others set (status, history)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        patch = {"Job": self.batch.patch_namespaced_job,
                 "CronJob": self.batch.patch_namespaced_cron_job,
                 "ConfigMap": self.core.patch_namespaced_config_map}[kind]
        extra = {"dry_run": "All"} if dry_run else {}
        return _call(f"apply {kind.lower()} {namespace}/{name}", patch, name, namespace, manifest,
                     field_manager=FIELD_MANAGER, force=True,
                     _content_type="application/apply-patch+yaml", **extra)

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        """A merge patch of a few fields, e.g. ``{"spec": {"suspend": True}}``."""
        func = {"Job": self.batch.patch_namespaced_job,
                "CronJob": self.batch.patch_namespaced_cron_job}[kind]
        return _call(f"patch {kind.lower()} {namespace}/{name}", func, name, namespace, patch,
                     _content_type="application/merge-patch+json")

    def set_owner(self, namespace: str, config_map: str, owner: dict) -> dict:
        """Make ``owner`` (a Job or CronJob) own the ConfigMap, so it is garbage-collected too."""
        ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
               "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
        patch = {"metadata": {"ownerReferences": [ref]}}
        return _call(f"patch configmap {namespace}/{config_map}", self.core.patch_namespaced_config_map,
                     config_map, namespace, patch)

    def delete(self, kind: str, namespace: str, name: str) -> dict:
        """Delete an object; a Job's or CronJob's pods go with it (background propagation)."""
        delete = {"Job": self.batch.delete_namespaced_job,
                  "CronJob": self.batch.delete_namespaced_cron_job,
                  "ConfigMap": self.core.delete_namespaced_config_map,
                  "Service": self.core.delete_namespaced_service}[kind]
        return _call(f"delete {kind.lower()} {namespace}/{name}", delete, name, namespace,
                     propagation_policy="Background")

    def get_kueue(self, kind: str, namespace: str, name: str) -> dict:
        """A Kueue object (``kueue.x-k8s.io/v1beta2``): LocalQueue, ClusterQueue, Workload."""
        plural = KUEUE_PLURALS[kind]
        if kind == "ClusterQueue":
            return self._read(f"clusterqueue {name}", self.custom.get_cluster_custom_object,
                              KUEUE_GROUP, KUEUE_VERSION, plural, name)
        return self._read(f"{kind.lower()} {namespace}/{name}",
                          self.custom.get_namespaced_custom_object,
                          KUEUE_GROUP, KUEUE_VERSION, namespace, plural, name)

    def list_kueue(self, kind: str, namespace: str) -> list[dict]:
        """Kueue objects of one kind in ``namespace`` (Workloads, LocalQueues)."""
        return self._read(f"list {kind.lower()}s in {namespace}",
                          self.custom.list_namespaced_custom_object,
                          KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_PLURALS[kind])["items"]

    def pending_workloads(self, namespace: str, local_queue: str) -> list[dict]:
        """Kueue's visibility API: the LocalQueue's pending Workloads with their positions.
        Not retried: an unavailable aggregated API answers 503, and status has a fallback."""
        path = (f"/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/{namespace}/localqueues/"
                f"{local_queue}/pendingworkloads")
        return _call(f"pending workloads of localqueue {namespace}/{local_queue}", _raw_get,
                     self.core.api_client, path)["items"]

    def nodes(self) -> list[dict]:
        """Every Node (cluster-scoped: the launcher's ClusterRole kubetrain-launcher-nodes)."""
        return self._read("list nodes", self.core.list_node)["items"]

    # -- lists ----------------------------------------------------------------------------

    def list(self, kind: str, namespace: str, label_selector: str = "") -> dict:
        """A list response ({"items": [...], "metadata": {"resourceVersion": ...}})."""
        list_ = {"Job": self.batch.list_namespaced_job,
                 "CronJob": self.batch.list_namespaced_cron_job,
                 "Pod": self.core.list_namespaced_pod}[kind]
        return self._read(f"list {kind.lower()}s in {namespace}", list_, namespace,
                          label_selector=label_selector)

    def events(self, namespace: str, kind: str, name: str) -> list[dict]:
        """The events recorded about one object (e.g. a Job's FailedCreate), oldest first."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        items = self._read(f"list events of {kind.lower()} {namespace}/{name}",
                           self.core.list_namespaced_event, namespace, field_selector=selector)["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    # -- watches and streams ----------------------------------------------------------------

    def watch(self, kind: str, namespace: str, *, name: str = "", label_selector: str = "",
              resource_version: str = "", timeout_seconds: int = 30) -> Iterator[tuple[str, dict]]:
        """(event type, object) for changes after ``resource_version``, for at most
        ``timeout_seconds``. Raises Gone when the version is too old (list again)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        list_ = {"Job": self.batch.list_namespaced_job,
                 "Pod": self.core.list_namespaced_pod}[kind]
        kwargs: dict[str, Any] = {"timeout_seconds": max(1, int(timeout_seconds)),
                                  "_request_timeout": int(timeout_seconds) + REQUEST_TIMEOUT_SECONDS}
        if name:
            kwargs["field_selector"] = f"metadata.name={name}"
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
        w = watch.Watch()
        try:
            for event in w.stream(list_, namespace, **kwargs):
                yield event["type"], event["raw_object"]
        except (ApiException, HTTPError, OSError) as exc:
            raise _translate(exc, f"watch {kind.lower()}s in {namespace}") from None
        finally:
            w.stop()

    def logs(self, namespace: str, pod: str, container: str, follow: bool = False, *,
             tail_lines: int | None = None, since_seconds: int | None = None,
             timestamps: bool = False) -> Iterator[str]:
        """The container's log, line by line; with ``follow``, until the container exits.
        ``tail_lines``, ``since_seconds`` and ``timestamps`` are kubectl's --tail, --since and
        --timestamps."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        what = f"logs of pod {namespace}/{pod}"
        extra: dict[str, Any] = {"timestamps": True} if timestamps else {}
        if tail_lines is not None:
            extra["tail_lines"] = tail_lines
        if since_seconds is not None:
            extra["since_seconds"] = max(1, int(since_seconds))
        try:
            resp = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, follow=follow, _preload_content=False, **extra,
                _request_timeout=None if follow else REQUEST_TIMEOUT_SECONDS)
            try:
                pending = b""
                for chunk in resp.stream(4096, decode_content=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace")
                if pending:
                    yield pending.decode("utf-8", "replace")
            finally:
                resp.release_conn()
        except (ApiException, HTTPError, OSError) as exc:
            raise _translate(exc, what) from None


def connect(kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """A Cluster from kubeconfig (``--kubeconfig``/``$KUBECONFIG``/~/.kube/config, ``--context``)
    or, with neither flag and inside a pod, from the in-cluster service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    in_cluster = not kubeconfig and not context and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            api = client.ApiClient(configuration=cfg)
            try:
                with open(IN_CLUSTER_NAMESPACE_FILE) as f:
                    namespace = f.read().strip() or "default"
            except OSError:
                namespace = "default"
        else:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError, TypeError, ValueError, AttributeError, KeyError,
            yaml.YAMLError) as exc:
        source = "in-cluster config" if in_cluster else (kubeconfig or os.environ.get("KUBECONFIG")
                                                           or "~/.kube/config")
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise KubeconfigError(f"cannot load the Kubernetes config from {source}: {detail}; check "
                              "--kubeconfig/$KUBECONFIG and --context (kubectl config view)") from None
    host = api.configuration.host
    log.debug("connected to %s (namespace %s)", host, namespace)
    return Cluster(core=client.CoreV1Api(api), batch=client.BatchV1Api(api),
                   default_namespace=namespace, host=host, custom=client.CustomObjectsApi(api))
