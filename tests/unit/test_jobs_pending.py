"""Why a Job has not started (jobs.pending) and `submit --check` (jobs.preflight), on the fake
Cluster of test_jobs_follow: Kueue's Workloads and LocalQueues, the scheduler's conditions, the
kubelet's waiting reasons, shaped as the real controllers write them. The same lines are shown
against the real control plane and real Kueue in tests/cluster/test_cluster_kueue.py."""

from __future__ import annotations

import pytest
from test_jobs_follow import NS, SPEC, T0, FakeCluster, iso

from jobs import describe, listing, render, status
from jobs.preflight import checks
from jobs.spec import parse_spec

QUOTA_MESSAGE = ("couldn't assign flavors to pod set main: insufficient unused quota for "
                 "nvidia.com/gpu in flavor default-flavor, 1 more needed")


def queued_job(c: FakeCluster, name: str, queue: str = "q", gpus: int = 1) -> dict:
    spec = parse_spec({**SPEC, "name": name, "queue": queue, "gpus": gpus})
    job = render.render(spec, NS)[1]
    job["status"] = {}
    return c.put(job)


def workload(c: FakeCluster, job: dict, *, reserved: bool = False, message: str = QUOTA_MESSAGE,
             priority: int = 0, created: int = 0, **conditions) -> dict:
    conds = [{"type": "QuotaReserved", "status": "True" if reserved else "False",
              "reason": "QuotaReserved" if reserved else "Pending", "message": message}]
    conds += [{"type": t, "status": "True", "reason": r, "message": f"{r} by a higher priority",
               "lastTransitionTime": iso(T0)} for t, r in conditions.items()]
    return c.put({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                  "metadata": {"name": f"job-{job['metadata']['name']}-abcde",
                               "creationTimestamp": f"2026-01-01T00:00:{created:02d}Z",
                               "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"],
                                                    "uid": job["metadata"]["uid"]}]},
                  "spec": {"queueName": job["metadata"]["labels"][render.QUEUE_LABEL],
                           "priority": priority},
                  "status": {"conditions": conds}})


def local_queue(c: FakeCluster, name: str = "q") -> None:
    c.put({"kind": "LocalQueue", "metadata": {"name": name}, "spec": {"clusterQueue": "cq"}})


def node(c: FakeCluster, name: str = "node-1", gpus: int = 8, labels: dict | None = None,
         taints: list | None = None) -> None:
    c.put({"kind": "Node", "metadata": {"name": name, "labels": labels or {}},
           "spec": {"taints": taints or []},
           "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": str(gpus)}}},
          namespace="")


def pending_pod(c: FakeCluster, job: str = "digits", message: str = "", spec: dict | None = None,
                **status) -> dict:
    pod_spec = {"containers": [{"name": "trainer", "image": "trainer:0.1.0", "resources": {
        "limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "16"}}}], **(spec or {})}
    st = {"phase": "Pending", **status}
    if message:
        st["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": message}]
    return c.put({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": f"{job}-x", "labels": {render.JOB_NAME_LABEL: job}},
                  "spec": pod_spec, "status": st})


def why(c: FakeCluster, name: str) -> str:
    return status.lookup(c, NS, name).why_pending


# ----------------------------------------------------------------------------- Kueue


def test_a_queued_job_names_its_queue_position_and_the_quota_it_waits_for():
    c = FakeCluster()
    local_queue(c)
    first, second = queued_job(c, "first"), queued_job(c, "second")
    workload(c, first, reserved=True, message="Quota reserved in ClusterQueue cq")
    workload(c, second, created=5)
    third = queued_job(c, "third")
    workload(c, third, created=9)
    assert why(c, "second") == ("queued in LocalQueue 'q', position 1 of 2 (next): quota in use: 1 "
                                "more nvidia.com/gpu needed than is free in flavor default-flavor "
                                "(admitted when running workloads finish)")
    assert why(c, "third").startswith("queued in LocalQueue 'q', position 2 of 2 (behind 1 workload):")
    assert why(c, "first") == "admitted by Kueue from LocalQueue 'q': starting"
    text = describe.status_text(status.lookup(c, NS, "third"))
    assert text.splitlines()[-1] == f"  waiting: {why(c, 'third')}"


def test_a_gang_larger_than_the_quota_says_how_much_it_needs():
    c = FakeCluster()
    local_queue(c)
    job = queued_job(c, "gang")
    workload(c, job, message=(
        "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor "
        "default-flavor, previously considered podsets requests (0) + current podset request (2) "
        "> maximum capacity (1)"))
    assert why(c, "gang").endswith(": quota exceeded for nvidia.com/gpu: needs 2, more than the "
                                   "ClusterQueue's 1 in flavor default-flavor (it will not be "
                                   "admitted until the quota grows)")


def test_queue_order_is_priority_then_age():
    c = FakeCluster()
    local_queue(c)
    old_low, new_high = queued_job(c, "old-low"), queued_job(c, "new-high")
    workload(c, old_low, created=1, priority=100)
    workload(c, new_high, created=30, priority=1000)
    assert "position 1 of 2" in why(c, "new-high")
    assert "position 2 of 2 (behind 1 workload)" in why(c, "old-low")


def test_a_preempted_job_says_so_while_it_waits_again():
    c = FakeCluster()
    local_queue(c)
    job = queued_job(c, "low")
    workload(c, job, Evicted="Preempted")
    assert why(c, "low").startswith("queued in LocalQueue 'q', position 1 of 1 (next); preempted "
                                    "earlier: Preempted by a higher priority")


def test_a_missing_local_queue_is_named():
    c = FakeCluster()
    queued_job(c, "lost", queue="nope")
    assert why(c, "lost").startswith("LocalQueue 'nope' does not exist in namespace ml: Kueue will "
                                     "never admit it")


def test_list_shows_the_reason_in_place_of_progress():
    c = FakeCluster()
    local_queue(c)
    job = queued_job(c, "second")
    workload(c, job)
    (row,) = [r for r in listing.rows(listing.list_objects(c, NS)) if r[1] == "second"]
    assert row[2] == "Suspended"
    assert row[5].startswith("queued in LocalQueue 'q', position 1 of 1")


# ----------------------------------------------------------------------------- scheduler, kubelet

SCHED_GPU = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes..."


def test_more_gpus_than_any_node_has():
    c = FakeCluster()
    c.job(active=1)
    node(c, gpus=8)
    pending_pod(c, message=SCHED_GPU)
    assert why(c, "digits") == ("unschedulable: no node has 16 GPUs (the most allocatable: 8 on "
                                "node node-1; nvidia.com/gpu)")


def test_an_untolerated_taint():
    c = FakeCluster()
    c.job(active=1)
    node(c, taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])
    pending_pod(c, message="0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: ml}.",
                spec={"containers": [{"name": "trainer", "image": "t:1"}]})
    assert why(c, "digits") == ("unschedulable: node node-1 has taint dedicated=ml:NoSchedule, not "
                                "tolerated by the pod: add it to 'tolerations' in the spec")


def test_a_tolerated_taint_and_a_selector_that_matches_nothing():
    c = FakeCluster()
    c.job(active=1)
    node(c, labels={"pool": "a"}, taints=[{"key": "dedicated", "effect": "NoSchedule"}])
    pending_pod(c, message="0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
                spec={"containers": [{"name": "trainer", "image": "t:1"}],
                      "nodeSelector": {"pool": "b"},
                      "tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    assert why(c, "digits").startswith("unschedulable: node selector matches no node (pool=b)")


def test_without_node_access_the_schedulers_words_are_kept():
    c = FakeCluster()
    c.nodes_forbidden = True
    c.job(active=1)
    pending_pod(c, message=SCHED_GPU)
    assert why(c, "digits") == f"unschedulable: not enough nvidia.com/gpu free on any node ({SCHED_GPU})"


@pytest.mark.parametrize(("waiting", "expected"), [
    ({"reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:0.1.0"'},
     'image trainer:0.1.0 not pulled (ImagePullBackOff): Back-off pulling image "trainer:0.1.0"'),
    ({"reason": "CreateContainerConfigError", "message": 'secret "gcs-key" not found'},
     "Secret 'gcs-key' missing: secret \"gcs-key\" not found"),
])
def test_the_kubelets_reasons(waiting, expected):
    c = FakeCluster()
    c.job(active=1)
    pending_pod(c, containerStatuses=[{"name": "trainer", "state": {"waiting": waiting}}])
    assert why(c, "digits") == expected


def test_a_volume_that_cannot_mount():
    c = FakeCluster()
    c.job(active=1)
    pending_pod(c)
    c.events_of[("Pod", "digits-x")] = [{"reason": "FailedMount", "message": 'persistentvolumeclaim "data" not found'}]
    assert why(c, "digits") == ('a volume cannot mount (FailedMount): persistentvolumeclaim "data" '
                                "not found")


def test_a_running_or_finished_job_has_no_reason():
    c = FakeCluster()
    c.job(active=1, ready=1)
    c.pod("digits-a")
    assert why(c, "digits") == ""


# ----------------------------------------------------------------------------- submit --check


def test_check_passes_when_the_pod_could_start():
    c = FakeCluster()
    node(c)
    found = checks(c, parse_spec({**SPEC, "gpus": 2}), NS)
    assert all(ch.ok for ch in found), found
    assert found[-1].line == "a node could hold the pod (1 node(s) looked at)"
    assert not [k for k in c.objects if k[0] in ("Job", "ConfigMap")]  # nothing created


def test_check_fails_on_gpus_beyond_any_node_and_a_missing_queue():
    c = FakeCluster()
    node(c, gpus=8)
    found = checks(c, parse_spec({**SPEC, "gpus": 16, "memory": "64Gi", "queue": "nope"}), NS)
    failed = [ch.line for ch in found if not ch.ok]
    assert failed[0].startswith("LocalQueue 'nope' does not exist in namespace ml")
    assert failed[1] == ("no node could hold the pod: no node has 16 GPUs (the most allocatable: "
                         "8 on node node-1; nvidia.com/gpu)")


def test_check_reports_a_missing_service_account_from_the_dry_run():
    c = FakeCluster()
    c.objects.clear()
    (only,) = checks(c, parse_spec(SPEC), NS)
    assert not only.ok and "serviceaccount ml/kubetrain-trainer does not exist" in only.line


def test_submit_check_exits_2_with_the_reason_and_creates_nothing(monkeypatch, capsys):
    from jobs import cli

    c = FakeCluster()
    c.default_namespace = NS
    node(c, gpus=8)
    monkeypatch.setattr(cli, "connect", lambda *a, **k: c)
    code = cli.main(["submit", "examples/kind.yaml", "--set", "gpus=16", "--set", "memory=32Gi",
                     "-n", NS, "--check"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "FAIL no node could hold the pod: no node has 16 GPUs" in out
    assert err.startswith("error: digits-kind would not start: no node could hold the pod")
    assert not [k for k in c.objects if k[0] in ("Job", "ConfigMap")]
    assert cli.main(["submit", "examples/kind.yaml", "-n", NS, "--check"]) == 0
    assert "digits-kind could start in namespace ml (nothing was created)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- timeline


def test_the_timeline_of_a_queued_preempted_and_resumed_job():
    from jobs import timeline

    def at(seconds: int) -> str:
        return f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"

    def pod(name, scheduled, started, finished, code):
        return {"metadata": {"name": name, "creationTimestamp": at(scheduled)},
                "status": {"conditions": [{"type": "PodScheduled", "status": "True",
                                           "lastTransitionTime": at(scheduled)}],
                           "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                               "exitCode": code, "startedAt": at(started), "finishedAt": at(finished)}}}]}}

    job = {"metadata": {"creationTimestamp": at(0)},
           "status": {"completionTime": at(200)}}
    wl = {"status": {"conditions": [{"type": "Admitted", "status": "True",
                                     "lastTransitionTime": at(30)}]}}
    pods = [pod("a", 31, 35, 95, 143), pod("b", 130, 133, 199, 0)]
    lines = timeline.lines(job, pods, wl, T0)
    assert lines[0] == "  time: queued 30s, starting 5s, running 2m45s (1 preemption), total 3m20s"
    assert lines[1] == ("  timeline: admitted +30s, scheduled +31s, started +35s, preempted "
                        "(checkpoint saved, exit 143) +1m35s, resumed +2m13s, finished +3m20s")
