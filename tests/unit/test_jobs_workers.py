"""``workers: N``: the spec key, the Indexed Job + headless Service, submit/delete, status/logs.

No cluster: the manifests are dicts (schema-checked in test_manifests_lint.py through
examples/multinode.yaml, pinned in tests/golden/multinode.yaml) and the launcher runs on the
fake Cluster of test_jobs_follow.py. tests/cluster/test_cluster_multiworker.py runs the same
on a real control plane.
"""

from __future__ import annotations

import pytest

from jobs import describe, follow, logs, render, status, workers
from jobs.spec import SpecError, parse_spec
from jobs.submit import delete, submit
from tests.unit.test_jobs_follow import NS, SPEC, FakeCluster, terminated
from trainer.runtime.workers import Cluster, from_environment

MW = {**SPEC, "name": "digits-mw", "workers": 3}


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_one_worker_renders_todays_job_exactly():
    assert render.render(parse_spec({**SPEC, "workers": 1})) == render.render(parse_spec(SPEC))
    job = render.render(parse_spec(SPEC))[1]
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]


def test_workers_render_an_indexed_job_and_a_headless_service():
    config_map, job, service = render.render(parse_spec(MW), NS)
    assert [m["kind"] for m in (config_map, job, service)] == ["ConfigMap", "Job", "Service"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "digits-mw"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {render.JOB_NAME_LABEL: "digits-mw"}
    assert service["spec"]["ports"] == [{"name": "collective", "port": 2222, "targetPort": 2222,
                                         "protocol": "TCP"}]
    container = pod["containers"][0]
    assert container["ports"][0]["containerPort"] == 2222
    addresses = _env(container)[workers.WORKERS_ENV].split(",")
    # the stable pod hostnames <job>-<index>.<service>
    assert addresses == [f"digits-mw-{i}.digits-mw:2222" for i in range(3)]
    # What the Job controller adds (JOB_COMPLETION_INDEX) + what we render = the trainer's cluster.
    env = {workers.WORKERS_ENV: _env(container)[workers.WORKERS_ENV], "JOB_COMPLETION_INDEX": "2"}
    assert from_environment(env) == Cluster(tuple(addresses), 2)
    # every failure rule still applies; peer loss (75) is retried like preemption
    ignore = next(r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "Ignore" and "onExitCodes" in r)
    assert 75 in ignore["onExitCodes"]["values"]


def test_worker_count_changes_the_spec_hash():
    def spec_hash(n):
        return render.render(parse_spec({**MW, "workers": n}))[1]["metadata"]["annotations"][render.SPEC_HASH_ANNOTATION]

    assert spec_hash(2) != spec_hash(3)


@pytest.mark.parametrize(
    "values, message",
    [
        ({**MW, "workers": 0}, "'workers': must be between 1 and 256"),
        ({**MW, "workers": "two"}, "'workers': expected a whole number"),
        ({**MW, "schedule": "@daily"}, "scheduled .* trains on one pod"),
        ({**MW, "name": "9digits"}, "must start with a letter when workers > 1"),
        ({**MW, "name": "d" * 62}, "hostname .* is longer than 63"),
        ({**MW, "train": {**SPEC["train"], "cpu_replicas": 2}}, "cpu_replicas at 0 or 1"),
    ],
    ids=["zero", "not-a-number", "schedule", "digit-name", "long-name", "cpu-replicas"],
)
def test_bad_worker_specs(values, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(values)


def test_submit_creates_the_service_owned_by_the_job_and_delete_removes_it():
    c = FakeCluster()
    done = submit(c, parse_spec(MW), NS)
    assert done.created
    assert c.calls == ["apply ConfigMap", "apply Job", "create Service", "own ConfigMap by Job"]
    job = c.get("Job", NS, "digits-mw")
    assert c.get("Service", NS, "digits-mw")["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    c.objects.pop(("Service", NS, "digits-mw"))  # as if an earlier submit stopped after the Job
    assert submit(c, parse_spec(MW), NS).created is False
    assert c.get("Service", NS, "digits-mw")

    assert delete(c, "digits-mw", NS) == "Job"
    assert [k for k in c.objects if k[0] != "ServiceAccount"] == []


def test_delete_leaves_a_service_that_is_not_ours():
    c = FakeCluster()
    submit(c, parse_spec(SPEC), NS)
    c.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "digits"}})
    delete(c, "digits", NS)
    assert c.get("Service", NS, "digits")


def _worker_pod(c, name, index, phase="Running", **status):
    pod = c.pod(name, job="digits-mw", phase=phase, **status)
    pod["metadata"]["annotations"] = {workers.COMPLETION_INDEX_ANNOTATION: str(index)}
    return c.put(pod)


def _mw_job(c, **status):
    job = render.render(parse_spec(MW), NS)[1]
    job["status"] = {"active": 3, "ready": 3, **status}
    return c.put(job)


def test_status_and_progress_show_each_worker():
    c = FakeCluster()
    _mw_job(c)
    _worker_pod(c, "digits-mw-0-a", 0)
    _worker_pod(c, "digits-mw-1-a", 1, phase="Failed", **terminated(75))
    c.seconds += 5
    _worker_pod(c, "digits-mw-1-b", 1, phase="Pending")
    _worker_pod(c, "digits-mw-2-a", 2)
    pods = c.list("Pod", NS)["items"]
    assert follow.worker_phases(pods) == {0: "Running", 1: "Pending", 2: "Running"}
    line = follow.progress_line("digits-mw", follow.job_state(c.get("Job", NS, "digits-mw")), pods)
    assert line == "job digits-mw: Running - workers 0 Running, 1 Pending, 2 Running (1 pod(s) replaced)"
    text = describe.status_text(status.lookup(c, NS, "digits-mw"))
    assert "3 of 3 workers 0 Running, 1 Pending, 2 Running (service digits-mw)" in text
    assert "pod digits-mw-1-a  worker 1  Failed" in text
    assert "exit 75 (multi-worker: another worker died or hangs" in text


def test_logs_pick_worker_zero_by_default_one_worker_or_all():
    c = FakeCluster()
    _mw_job(c, conditions=[{"type": "Complete", "status": "True"}])
    for i in range(3):
        _worker_pod(c, f"digits-mw-{i}-a", i, phase="Succeeded")
    c.logs_of = {f"digits-mw-{i}-a": [f"line of {i}"] for i in range(3)}
    read = lambda **kw: list(logs.stream_logs(c, NS, "digits-mw", follow=False, all_pods=False, **kw))
    assert read() == ["line of 0"]
    assert read(worker=2) == ["line of 2"]
    assert read(all_workers=True) == ["[worker 0] line of 0", "[worker 1] line of 1", "[worker 2] line of 2"]
    following = list(logs.stream_logs(c, NS, "digits-mw", follow=True, all_pods=False, all_workers=True))
    assert sorted(following) == ["[worker 0] line of 0", "[worker 1] line of 1", "[worker 2] line of 2"]


def test_worker_k_of_a_single_pod_job_is_an_error():
    c = FakeCluster()
    c.job(conditions=[("Complete", "", "")])
    c.pod("digits-a", phase="Succeeded")
    with pytest.raises(Exception, match="has no worker 1"):
        list(logs.stream_logs(c, NS, "digits", follow=False, all_pods=False, worker=1))
