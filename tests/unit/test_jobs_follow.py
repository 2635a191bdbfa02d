"""submit / delete / wait / logs / status / list on a fake Cluster (plain dicts, scripted changes).

The same code runs against a real API server in tests/cluster/; here every branch is reached
in milliseconds, with a fake clock that watches advance.
"""

from __future__ import annotations

import ast
import copy
import datetime as dt
import itertools
from pathlib import Path

import pytest

from jobs import describe, follow, listing, logs, render, status
from jobs.cluster import Conflict, Forbidden, NotFound
from jobs.spec import parse_spec
from jobs.submit import delete, submit

REPO = Path(__file__).resolve().parents[2]
NS = "ml"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SPEC = {"name": "digits", "image": "trainer:0.1.0",
        "train": {"data": "builtin:digits", "output": "gs://b/runs/digits"}}


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    """The Cluster interface over a dict; `steps` run one per watch call (a change or a timeout)."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.logs_of: dict[str, list[str]] = {}
        self.after_logs: dict[str, callable] = {}
        self.steps: list = []
        self.seconds = 0.0
        self.uids = itertools.count(1)
        self.rv = itertools.count(1)
        self.calls: list[str] = []
        self.events_of: dict[tuple[str, str], list[dict]] = {}
        self.nodes_forbidden = False
        self.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubetrain-trainer"}})

    # clocks
    def clock(self) -> float:
        return self.seconds

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.seconds)

    # the Cluster interface
    def get(self, kind, namespace, name):
        try:
            return copy.deepcopy(self.objects[(kind, namespace, name)])
        except KeyError:
            raise NotFound(f"{kind.lower()} {namespace}/{name}: not found") from None

    def put(self, obj, namespace=NS):
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta.setdefault("uid", f"uid-{next(self.uids)}")
        meta.setdefault("creationTimestamp", iso(self.now()))
        meta["resourceVersion"] = str(next(self.rv))
        self.objects[(obj["kind"], namespace, meta["name"])] = obj
        return obj

    def create(self, namespace, manifest, dry_run=False):
        self.calls.append(f"create {manifest['kind']}" + (" (dry run)" if dry_run else ""))
        if (manifest["kind"], namespace, manifest["metadata"]["name"]) in self.objects:
            raise Conflict("already exists")
        return copy.deepcopy(manifest) if dry_run else self.put(manifest, namespace)

    def apply(self, namespace, manifest, dry_run=False):
        """Server-side apply, roughly: the manifest's fields over the live object's."""
        self.calls.append(f"apply {manifest['kind']}" + (" (dry run)" if dry_run else ""))
        key = (manifest["kind"], namespace, manifest["metadata"]["name"])
        merged = copy.deepcopy(manifest)
        live = self.objects.get(key)
        if live is not None:
            meta = merged["metadata"]
            for k in ("uid", "creationTimestamp", "ownerReferences"):
                if k in live["metadata"]:
                    meta[k] = live["metadata"][k]
            if "status" in live:
                merged["status"] = live["status"]
        if dry_run:
            return merged
        return self.put(merged, namespace)

    def patch(self, kind, namespace, name, patch):
        self.calls.append(f"patch {kind} {patch}")
        obj = self.objects[(kind, namespace, name)]
        obj["spec"].update(patch["spec"])
        return copy.deepcopy(obj)

    def set_owner(self, namespace, config_map, owner):
        self.calls.append(f"own ConfigMap by {owner['kind']}")
        self.objects[("ConfigMap", namespace, config_map)]["metadata"]["ownerReferences"] = [
            {"kind": owner["kind"], "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]

    def delete(self, kind, namespace, name):
        self.calls.append(f"delete {kind}")
        if self.objects.pop((kind, namespace, name), None) is None:
            raise NotFound(f"{kind.lower()} {namespace}/{name}: not found")

    def list(self, kind, namespace, label_selector=""):
        wanted = dict(p.split("=", 1) for p in label_selector.split(",") if p)
        items = [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace
                 and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in wanted.items())]
        return {"items": items, "metadata": {"resourceVersion": "1"}}

    def events(self, namespace, kind, name):
        return copy.deepcopy(self.events_of.get((kind, name), []))

    def get_kueue(self, kind, namespace, name):
        return self.get(kind, "" if kind == "ClusterQueue" else namespace, name)

    def list_kueue(self, kind, namespace):
        return self.list(kind, namespace)["items"]

    def pending_workloads(self, namespace, local_queue):
        raise NotFound("the server could not find the requested resource (no visibility API)")

    def nodes(self):
        if self.nodes_forbidden:
            raise Forbidden("list nodes: forbidden")
        return self.list("Node", "")["items"]

    def watch(self, kind, namespace, *, name="", label_selector="", resource_version="", timeout_seconds=30):
        step = self.steps.pop(0) if self.steps else None
        if step is None:  # nothing happens: the watch times out
            self.seconds += timeout_seconds
            return
        self.seconds += 1
        step(self)
        yield "MODIFIED", {}

    def logs(self, namespace, pod, container, follow=False, **opts):
        assert container == "trainer"
        yield from self.logs_of.get(pod, [])
        if follow and pod in self.after_logs:
            self.after_logs.pop(pod)(self)

    # building blocks for scripts
    def job(self, name="digits", conditions=(), active=0, ready=0, **status):
        job = render.render(parse_spec({**SPEC, "name": name}), NS)[1]
        job["status"] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                        for t, r, m in conditions], "active": active, "ready": ready,
                         **status}
        return self.put(job)

    def pod(self, name, job="digits", phase="Running", **status):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {render.JOB_NAME_LABEL: job}},
               "spec": {"nodeName": "node-1"}, "status": {"phase": phase, **status}}
        return self.put(pod)


def terminated(code, message="", reason="Error"):
    return {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": code, "reason": reason, "message": message}}}]}


def unschedulable(since):
    return {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "lastTransitionTime": iso(since),
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}


def wait(cluster, **kw):
    lines = []
    kw = {"timeout_seconds": 3600, "pending_timeout_seconds": 600, **kw}
    code, message = follow.wait(cluster, NS, "digits", report=lines.append, clock=cluster.clock,
                                now=cluster.now, **kw)
    return code, message, lines


# ----------------------------------------------------------------------------- submit, delete


def test_submit_creates_config_then_job_then_links_them():
    c = FakeCluster()
    done = submit(c, parse_spec(SPEC), NS)
    assert (done.kind, done.name, done.created) == ("Job", "digits", True)
    assert c.calls == ["apply ConfigMap", "apply Job", "own ConfigMap by Job"]
    owner = c.get("ConfigMap", NS, "digits-config")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == c.get("Job", NS, "digits")["metadata"]["uid"]


def trainer_env(obj: dict) -> dict:
    pod = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else \
        obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == render.CONTAINER]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_submit_stamps_a_new_job_with_its_submission_time_and_render_stays_pure():
    from trainer.core.contract import SUBMITTED_ENV
    from trainer.training.ledger import parse_time

    c = FakeCluster()
    submit(c, parse_spec(SPEC), NS, now=T0 + dt.timedelta(seconds=1.25))
    env = trainer_env(c.get("Job", NS, "digits"))
    assert env[SUBMITTED_ENV] == "2026-01-01T00:00:01.250Z"  # what the trainer's ledger reads
    assert parse_time(env[SUBMITTED_ENV]) == T0.timestamp() + 1.25
    assert SUBMITTED_ENV not in trainer_env(render.render(parse_spec(SPEC), NS)[1])
    # the same spec again is unchanged: nothing sent, the first submission's time stays
    assert submit(c, parse_spec(SPEC), NS, now=T0 + dt.timedelta(hours=1)).action == "unchanged"
    assert trainer_env(c.get("Job", NS, "digits"))[SUBMITTED_ENV] == "2026-01-01T00:00:01.250Z"
    # a dry run shows what would be created; a CronJob's runs carry none (its template is fixed)
    assert SUBMITTED_ENV in trainer_env(submit(FakeCluster(), parse_spec(SPEC), NS, dry_run=True).objects[1])
    cron = FakeCluster()
    submit(cron, parse_spec({**SPEC, "schedule": "@daily"}), NS, now=T0)
    assert SUBMITTED_ENV not in trainer_env(cron.get("CronJob", NS, "digits"))


def test_submit_needs_the_trainers_service_account():
    c = FakeCluster()
    c.objects.clear()
    with pytest.raises(NotFound, match="serviceaccount ml/kubetrain-trainer does not exist"):
        submit(c, parse_spec(SPEC), NS)
    assert c.calls == []


def test_submit_is_idempotent_and_refuses_a_changed_spec():
    c = FakeCluster()
    submit(c, parse_spec(SPEC), NS)
    c.calls.clear()
    assert submit(c, parse_spec(SPEC), NS).created is False
    assert c.calls == []
    with pytest.raises(Conflict, match=r"different spec, and a Job cannot change once it ran: "
                                        r"delete it first \(python -m jobs delete digits -n ml\)"):
        submit(c, parse_spec({**SPEC, "gpus": 1}), NS)


def test_submit_scheduled_spec_creates_a_cron_job():
    c = FakeCluster()
    done = submit(c, parse_spec({**SPEC, "schedule": "@daily"}), NS)
    assert done.kind == "CronJob" and c.get("CronJob", NS, "digits")["spec"]["schedule"] == "@daily"


def test_submit_reuses_its_own_leftover_config_map_but_not_someone_elses():
    c = FakeCluster()
    c.put(render.render(parse_spec(SPEC), NS)[0])  # left by an interrupted submit
    assert submit(c, parse_spec(SPEC), NS).created
    assert "apply ConfigMap" in c.calls

    c = FakeCluster()
    c.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "digits-config"}})
    with pytest.raises(Conflict, match="not managed by kubetrain"):
        submit(c, parse_spec(SPEC), NS)


def test_delete_removes_job_and_config_and_only_ours():
    c = FakeCluster()
    submit(c, parse_spec(SPEC), NS)
    assert delete(c, "digits", NS) == "Job"
    assert [k for k in c.objects if k[0] != "ServiceAccount"] == []
    with pytest.raises(NotFound, match="no job or cronjob named 'digits'"):
        delete(c, "digits", NS)
    c.put({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "other"}})
    with pytest.raises(Conflict, match="not made by kubetrain"):
        delete(c, "other", NS)


# ----------------------------------------------------------------------------- wait


def test_wait_until_complete():
    c = FakeCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.steps = [None, lambda c: c.job(conditions=[("Complete", "", "")])]
    code, message, lines = wait(c)
    assert (code, message) == (0, "job digits succeeded")
    assert lines == ["job digits: Running - pod digits-a Running"]


def test_wait_failure_says_why_with_the_trainers_last_lines():
    c = FakeCluster()
    c.job(conditions=[("Failed", "PodFailurePolicy", ("Container trainer for pod ml/digits-a failed "
                       "with exit code 2 matching FailJob rule at index 0"))])
    c.pod("digits-a", phase="Failed", **terminated(2, "loading config\nerror: unknown config key 'epoch'"))
    code, message, _ = wait(c)
    assert code == 1
    assert message.splitlines() == [
        ("job digits failed: PodFailurePolicy (the trainer exited with a code that is never retried): "
        "Container trainer for pod ml/digits-a failed with exit code 2 matching FailJob rule at index 0"),
        "  last pod digits-a: exit 2 (bad configuration: not retried, fix the spec's train: section)",
        "  | loading config",
        "  | error: unknown config key 'epoch'",
    ]


def test_wait_out_of_memory_and_deadline():
    c = FakeCluster()
    c.job(conditions=[("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    c.pod("digits-a", phase="Failed", **terminated(137, reason="OOMKilled"))
    code, message, _ = wait(c)
    assert code == 1
    assert "it ran longer than active_deadline_seconds" in message
    assert "out of memory: raise 'memory' in the spec" in message


def test_wait_out_of_memory_names_the_limit_to_raise():
    c = FakeCluster()
    c.job(conditions=[("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    pod = c.pod("digits-a", phase="Failed", **terminated(137, reason="OOMKilled"))
    pod["spec"]["containers"] = [{"name": "sidecar", "resources": {"limits": {"memory": "1Gi"}}},
                                 {"name": "trainer", "resources": {"limits": {"memory": "64Mi"}}}]
    code, message, _ = wait(c)
    assert code == 1
    assert "  last pod digits-a: exit 137 (out of memory (limit 64Mi): raise 'memory' in the spec)" \
        in message.splitlines()


def test_wait_fails_at_once_on_a_pod_long_unschedulable():
    c = FakeCluster()
    c.job(active=1)
    c.pod("digits-a", phase="Pending", **unschedulable(T0 - dt.timedelta(seconds=900)))
    code, message, _ = wait(c)
    assert code == 1
    assert message == ("job digits: pod digits-a stuck Unschedulable for 900s (--pending-timeout 600): "
                       "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")


def test_wait_gives_a_pending_pod_its_pending_timeout():
    c = FakeCluster()
    c.job(active=1)
    c.pod("digits-a", phase="Pending", **unschedulable(T0))
    code, message, lines = wait(c, pending_timeout_seconds=30)
    assert code == 1 and "stuck Unschedulable for 30s" in message
    assert c.seconds == 30  # three 10 s watch windows, no sleeping
    assert lines[0].startswith("job digits: Pending - pod digits-a Unschedulable: 0/3 nodes")


def test_wait_reports_a_job_that_cannot_create_pods():
    c = FakeCluster()
    c.job()
    c.events_of[("Job", "digits")] = [{"reason": "FailedCreate", "type": "Warning",
                                       "firstTimestamp": iso(T0),
                                       "message": 'Error creating: pods "digits-" is forbidden: error '
                                                  'looking up service account ml/kubetrain-trainer'}]
    code, message, lines = wait(c, pending_timeout_seconds=20)
    assert code == 1
    assert message.startswith("job digits: job digits stuck FailedCreate for 20s (--pending-timeout 20): "
                              "Error creating")
    assert lines[0].startswith("job digits: Pending - FailedCreate: Error creating")


def test_wait_reports_image_pull_problems():
    c = FakeCluster()
    c.job(active=1)
    c.pod("digits-a", phase="Pending", containerStatuses=[{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image trainer:0.1.0"}}}])
    code, message, _ = wait(c, pending_timeout_seconds=20)
    assert code == 1 and "stuck ImagePullBackOff" in message and "Back-off pulling" in message


def test_wait_times_out_and_notices_deletion():
    c = FakeCluster()
    c.job(active=1, ready=1)
    code, message, _ = wait(c, timeout_seconds=25)
    assert code == 1 and message == "timed out after 25s waiting for job digits (Running)"
    assert c.seconds == 25  # watch windows of 10, 10 and the 5 s left

    c = FakeCluster()
    c.job(active=1, ready=1)
    c.steps = [lambda c: c.objects.clear()]
    assert wait(c)[:2] == (1, "job ml/digits was deleted while waiting")


def test_wait_on_a_kueue_job_shows_it_is_queued():
    c = FakeCluster()
    c.job(conditions=[("Suspended", "JobSuspended", "")])
    c.objects[("Job", NS, "digits")]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "team-a"
    c.steps = [lambda c: c.job(conditions=[("Complete", "", "")])]
    code, _, lines = wait(c)
    assert code == 0
    assert lines == ["job digits: Suspended (waiting for Kueue to admit it from queue 'team-a')"]


# ----------------------------------------------------------------------------- logs


def test_logs_follow_moves_to_the_retry_pod():
    c = FakeCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    c.logs_of = {"digits-a": ["epoch 1/3", "SIGTERM: checkpoint saved"], "digits-b": ["resumed at epoch 2"]}

    def preempted(c):
        c.pod("digits-a", phase="Failed", **terminated(143))
        c.seconds += 5
        c.pod("digits-b", phase="Pending")

    c.after_logs = {"digits-a": preempted,
                    "digits-b": lambda c: (c.pod("digits-b", phase="Succeeded", **terminated(0)),
                                           c.job(conditions=[("Complete", "", "")]))}
    c.steps = [lambda c: c.pod("digits-b", phase="Running")]
    reports = []
    lines = list(logs.stream_logs(c, NS, "digits", follow=True, all_pods=False, report=reports.append))
    assert lines == ["epoch 1/3", "SIGTERM: checkpoint saved", "resumed at epoch 2"]
    assert reports == [
        "==> pod digits-a (Running) <==",
        "pod digits-a: exit 143 (stopped by SIGTERM after saving a checkpoint: retried, not counted)",
        "==> pod digits-b (Running) <==",
        "pod digits-b: exit 0 (success)",
        "job digits: Succeeded",
    ]


def test_logs_without_follow():
    c = FakeCluster()
    c.job(conditions=[("Complete", "", "")])
    c.pod("digits-a", phase="Failed")
    c.seconds += 60
    c.pod("digits-b", phase="Succeeded")
    c.logs_of = {"digits-a": ["a"], "digits-b": ["b"]}
    assert list(logs.stream_logs(c, NS, "digits", follow=False, all_pods=False)) == ["b"]
    assert list(logs.stream_logs(c, NS, "digits", follow=False, all_pods=True)) == [
        "==> pod digits-a <==", "a", "==> pod digits-b <==", "b"]
    c.objects = {k: v for k, v in c.objects.items() if k[0] != "Pod"}
    with pytest.raises(NotFound, match="has no pods yet"):
        list(logs.stream_logs(c, NS, "digits", follow=False, all_pods=False))


# ----------------------------------------------------------------------------- status, list


def test_cron_job_names_resolve_to_their_newest_run():
    c = FakeCluster()
    cron = c.put(render.render(parse_spec({**SPEC, "name": "nightly", "schedule": "@daily"}), NS)[1])
    with pytest.raises(NotFound, match="has not started a run yet"):
        follow.resolve_job(c, NS, "nightly")
    for i, when in enumerate([1, 2]):
        c.seconds = when * 86400
        run = c.job(name=f"nightly-{i}", conditions=[("Complete", "", "")])
        run["metadata"]["ownerReferences"] = [{"kind": "CronJob", "name": "nightly",
                                               "uid": cron["metadata"]["uid"]}]
        run["metadata"]["labels"]["app.kubernetes.io/instance"] = "nightly"  # from the jobTemplate
        c.put(run)
    assert follow.resolve_job(c, NS, "nightly") == "nightly-1"
    assert follow.resolve_job(c, NS, "nightly-0") == "nightly-0"
    with pytest.raises(NotFound, match="no job or cronjob named 'nope'"):
        follow.resolve_job(c, NS, "nope")
    text = describe.status_text(status.lookup(c, NS, "nightly"))
    assert text.startswith("cronjob nightly (namespace ml): schedule '@daily' (Etc/UTC)")
    assert "run nightly-1  Succeeded" in text
    rows = listing.rows(listing.list_objects(c, NS))
    assert rows[0] == ["KIND", "NAME", "STATE", "AGE", "SCHEDULE", "PROGRESS"]
    assert ["cronjob", "nightly"] == rows[1][:2]
    assert rows[-1][:3] == ["job", "nightly-1", "Succeeded"] and rows[-1][4] == "(run of nightly)"


def test_status_of_a_job_lists_its_pods_and_why_it_failed():
    c = FakeCluster()
    c.job(conditions=[("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
          failed=4)
    c.pod("digits-a", phase="Failed", **terminated(1, "Traceback ...\nZeroDivisionError"))
    text = describe.status_text(status.lookup(c, NS, "digits"))
    assert "job digits (namespace ml): Failed - BackoffLimitExceeded" in text
    assert "output gs://b/runs/digits" in text
    assert "pod digits-a  Failed" in text and "exit 1 (unexpected error" in text
    assert "  | ZeroDivisionError" in text


def test_age():
    assert follow.age(iso(T0), T0 + dt.timedelta(seconds=59)) == "59s"
    assert follow.age(iso(T0), T0 + dt.timedelta(hours=5, minutes=3)) == "5h"
    assert follow.age(None) == "-"


def test_only_the_cluster_module_imports_the_kubernetes_client():
    importers = []
    for path in sorted((REPO / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "kubernetes" or n.startswith("kubernetes.") for n in names):
                importers.append(path.name)
    assert set(importers) == {"cluster.py"}
