"""Day-2 launcher: durations, --set on spec keys, flags before/after the verb, -o formats,
server-side-apply submit of a changed CronJob, dry runs, run-now, suspend/resume, progress in
status/list, and `jobs runs` with its index.html (on a fake Cluster and temporary run dirs)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import yaml
from test_jobs_follow import NS, SPEC, T0, FakeCluster, trainer_env

from jobs import cli, control, listing, render, runs, status
from jobs.cluster import Conflict, NotFound
from jobs.durations import parse_duration
from jobs.spec import parse_spec
from jobs.submit import submit
from trainer.training import progress

NIGHTLY = {**SPEC, "name": "nightly", "schedule": "0 3 * * *"}


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                          ("1d", 86400), ("3600", 3600), ("1.5h", 5400), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "1h 30m", "-5", "m10"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_bad_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["wait", "x", "--timeout", "soon"])
    assert exc.value.code == 2 and "'soon' is not a duration" in capsys.readouterr().err


def test_set_reaches_spec_keys_and_train_keys():
    spec, train = cli.split_overrides(["image=trainer:0.2.0", "gpus=2", "storage.credentials=secret",
                                       "epochs=3", "train.model=seed_cnn", "augment.flip=none"])
    assert spec == {"image": "trainer:0.2.0", "gpus": 2, "storage": {"credentials": "secret"}}
    assert train == {"epochs": 3, "model": "seed_cnn", "augment": {"flip": "none"}}


def test_render_with_spec_key_overrides(capsys):
    assert cli.main(["render", "examples/kind.yaml", "--set", "gpus=2", "--set", "image=t:9.9",
                     "--set", "epochs=1", "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "List"
    config_map, job = out["items"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "t:9.9" and container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert yaml.safe_load(config_map["data"]["config.yaml"])["epochs"] == 1


def test_render_output_formats(capsys):
    assert cli.main(["render", "examples/nightly.yaml", "-o", "name"]) == 0
    assert capsys.readouterr().out.splitlines() == ["configmap/flowers-nightly-config",
                                                    "cronjob.batch/flowers-nightly"]
    assert cli.main(["render", "examples/nightly.yaml", "-o", "wide"]) == 0
    out = capsys.readouterr().out
    assert "SCHEDULE" in out and "/$(KUBETRAIN_JOB_NAME)" in out
    assert cli.main(["render", "examples/nightly.yaml"]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)] == ["ConfigMap", "CronJob"]


def test_cluster_flags_before_or_after_the_verb():
    p = cli._parser()
    before = p.parse_args(["-n", "ml", "--context", "c1", "--kubeconfig", "k", "status", "x"])
    after = p.parse_args(["status", "x", "-n", "ml", "--context", "c1", "--kubeconfig", "k"])
    for a in (before, after):
        assert (a.namespace, a.context, a.kubeconfig, a.name) == ("ml", "c1", "k", "x")
    mixed = p.parse_args(["-n", "ml", "logs", "x", "--context", "c2", "--tail", "5", "--since", "10m",
                          "--timestamps"])
    assert (mixed.namespace, mixed.context, mixed.tail, mixed.since, mixed.timestamps) == \
        ("ml", "c2", 5, 600, True)


def test_manifests_carry_the_version_and_a_domain_annotation():
    for m in render.render(parse_spec(NIGHTLY)):
        assert m["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"
    annotations = render.render(parse_spec(NIGHTLY))[1]["metadata"]["annotations"]
    assert list(annotations) == ["kubetrain.dev/spec-hash"]


# ----------------------------------------------------------------------------- submit


def test_submit_of_a_changed_cron_job_updates_it_in_place():
    c = FakeCluster()
    first = submit(c, parse_spec(NIGHTLY), NS)
    assert first.action == "created"
    uid = c.get("CronJob", NS, "nightly")["metadata"]["uid"]
    c.objects[("CronJob", NS, "nightly")]["status"] = {"lastScheduleTime": "2026-01-01T03:00:00Z"}
    c.calls.clear()
    done = submit(c, parse_spec({**NIGHTLY, "gpus": 1}), NS)
    assert done.action == "configured"
    assert c.calls == ["apply ConfigMap", "apply CronJob"]  # no delete, no new owner
    cron = c.get("CronJob", NS, "nightly")
    assert cron["metadata"]["uid"] == uid and cron["status"]["lastScheduleTime"]
    limits = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert submit(c, parse_spec({**NIGHTLY, "gpus": 1}), NS).action == "unchanged"


def test_submit_dry_run_stores_nothing():
    c = FakeCluster()
    done = submit(c, parse_spec(NIGHTLY), NS, dry_run=True)
    assert done.dry_run and done.action == "created"
    assert c.calls == ["apply ConfigMap (dry run)", "apply CronJob (dry run)"]
    assert [k for k in c.objects if k[0] != "ServiceAccount"] == []
    assert [o["kind"] for o in done.objects] == ["ConfigMap", "CronJob"]


def test_submit_refuses_an_object_it_did_not_make():
    c = FakeCluster()
    c.put({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {}})
    with pytest.raises(Conflict, match="not managed by kubetrain"):
        submit(c, parse_spec(NIGHTLY), NS)


# ----------------------------------------------------------------------------- run-now, suspend


def test_run_now_makes_a_job_from_the_template_owned_by_the_cron_job():
    c = FakeCluster()
    submit(c, parse_spec(NIGHTLY), NS)
    job = control.run_now(c, NS, "nightly", now=T0)
    assert trainer_env(job)["KUBETRAIN_SUBMITTED_AT"] == "2026-01-01T00:00:00.000Z"  # the ledger's origin
    assert "KUBETRAIN_SUBMITTED_AT" not in trainer_env(c.get("CronJob", NS, "nightly"))
    assert re.fullmatch(r"nightly-m[0-9a-z]+", job["metadata"]["name"])
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("CronJob", "nightly", True)
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubetrain"
    assert status.run_output(job) == f"gs://b/runs/digits/{job['metadata']['name']}"
    with pytest.raises(NotFound, match="no cronjob named 'digits'"):
        control.run_now(c, NS, "digits")


def test_manual_job_names_fit_and_sort():
    assert control.manual_job_name("n", 0) == "n-m0"
    a, b = control.manual_job_name("x" * 52, 1_800_000_000), control.manual_job_name("x" * 52, 1_800_000_001)
    assert len(a) <= 63 and a < b


def test_suspend_and_resume():
    c = FakeCluster()
    submit(c, parse_spec(NIGHTLY), NS)
    assert control.set_suspended(c, NS, "nightly", True)[0] == "CronJob"
    assert c.get("CronJob", NS, "nightly")["spec"]["suspend"] is True
    control.set_suspended(c, NS, "nightly", False)
    assert c.get("CronJob", NS, "nightly")["spec"]["suspend"] is False
    submit(c, parse_spec(SPEC), NS)
    assert control.set_suspended(c, NS, "digits", True)[0] == "Job"
    with pytest.raises(NotFound):
        control.set_suspended(c, NS, "nope", True)


# ----------------------------------------------------------------------------- progress


def _record(**fields) -> dict:
    base = {"format": progress.FORMAT, "state": "training", "epoch": 3, "epochs": 10, "step": 40,
            "steps_per_epoch": 187, "val_accuracy": 0.9312, "images_per_second": 851.2,
            "eta_seconds": 130.0, "started": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:05:00Z",
            "attempt": 1, "preemptions": 0, "wall_seconds": 300.0}
    return {**base, **fields}


def test_status_and_list_show_progress_from_the_run_directory(tmp_path):
    c = FakeCluster()
    out = tmp_path / "runs" / "digits"
    spec = parse_spec({**SPEC, "train": {**SPEC["train"], "output": str(out)}})
    submit(c, spec, NS)
    obj = status.status_object(status.lookup(c, NS, "digits"))
    assert obj["progress"] is None and "no progress record yet" in obj["progress_unavailable"]
    out.mkdir(parents=True)
    (out / progress.FILE).write_text(json.dumps(_record()))
    obj = status.status_object(status.lookup(c, NS, "digits"))
    assert obj["output"] == str(out) and obj["progress"]["epoch"] == 3
    line = status.progress_lines(obj)[0]
    assert line.startswith("  progress: epoch 4/10, step 40/187, val accuracy 0.9312, 851 img/s, ETA 2m10s")
    table = listing.rows(listing.list_objects(c, NS), wide=True)
    assert table[0][-3:] == ["PROGRESS", "OUTPUT", "UPDATED"]
    assert table[1][5].startswith("epoch 4/10, step 40/187, val 0.9312")
    (out / progress.FILE).write_text(json.dumps(_record(state="finished", epoch=10, test_accuracy=0.987)))
    assert "finished: test accuracy 0.9870" in status.progress_lines(status.status_object(status.lookup(c, NS, "digits")))[0]


def test_status_json_has_the_jobs_labels_annotations_and_conditions(tmp_path):
    c = FakeCluster()
    submit(c, parse_spec({**SPEC, "train": {**SPEC["train"], "output": str(tmp_path)}}), NS)
    job = c.get("Job", NS, "digits")
    job["status"] = {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit", "lastProbeTime": "x"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}
    c.put(job)
    obj = status.status_object(status.lookup(c, NS, "digits"))
    assert obj["labels"] == job["metadata"]["labels"]
    assert obj["labels"]["app.kubernetes.io/managed-by"] == "kubetrain"
    assert obj["annotations"] == job["metadata"].get("annotations", {})
    assert [(x["type"], x["reason"]) for x in obj["conditions"]] == [
        ("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
    assert set(obj["conditions"][0]) == {"type", "status", "reason", "message"}
    assert (obj["state"], obj["reason"]) == ("Failed", "BackoffLimitExceeded")


def test_status_reads_the_cluster_once_for_every_output_format(tmp_path, capsys):
    """Text, json and name come from one lookup: the Job, then its pods, and nothing twice."""
    c = FakeCluster()
    out = tmp_path / "runs" / "digits"
    out.mkdir(parents=True)
    (out / progress.FILE).write_text(json.dumps(_record()))
    submit(c, parse_spec({**SPEC, "train": {**SPEC["train"], "output": str(out)}}), NS)
    reads = []
    get, list_ = c.get, c.list
    c.get = lambda kind, *a, **k: reads.append(("get", kind)) or get(kind, *a, **k)
    c.list = lambda kind, *a, **k: reads.append(("list", kind)) or list_(kind, *a, **k)
    shown = {}
    for fmt in (None, "json", "name"):
        reads.clear()
        assert cli._status(argparse.Namespace(name="digits", output=fmt), c, NS) == 0
        assert reads == [("get", "Job"), ("list", "Pod")], (fmt, reads)
        shown[fmt] = capsys.readouterr().out
    assert shown[None].startswith("job digits (namespace ml): ")
    assert f"  output {out}\n" in shown[None] and "  progress: epoch 4/10, step 40/187" in shown[None]
    assert json.loads(shown["json"])["progress"]["epoch"] == 3
    assert shown["name"] == "job.batch/digits\n"


def test_eta():
    assert progress.eta_seconds(3, 40, 10, 100, 0.5) == (700 - 40) * 0.5
    assert progress.eta_seconds(0, 0, 10, 100, 0.0) is None


def test_progress_record_counts_attempts_and_keeps_the_start(tmp_path):
    from trainer.storage import LocalRunDir

    t = [100.0]
    rd = LocalRunDir(str(tmp_path))
    first = progress.ProgressRecord(rd, 5, 10, clock=lambda: t[0])
    first.update(force=True)
    t[0] += 60
    first.update(force=True, preemptions=1, state="preempted")
    second = progress.ProgressRecord(rd, 5, 10, clock=lambda: t[0])
    assert second.attempt == 2 and second.record["preemptions"] == 1
    assert second.record["started"] == first.record["started"]
    t[0] += 30
    assert second.wall_seconds() == pytest.approx(90)
    off = progress.ProgressRecord(LocalRunDir(str(tmp_path / "worker1")), 5, 10, enabled=False)
    off.update(force=True)
    assert not (tmp_path / "worker1" / progress.FILE).exists()


# ----------------------------------------------------------------------------- runs


def _fake_run(parent: Path, name: str, acc: float | None, promoted: bool | None, started: str) -> None:
    d = parent / name
    (d / "report").mkdir(parents=True)
    (d / progress.FILE).write_text(json.dumps(_record(state="finished" if acc else "training",
                                                      started=started)))
    if acc is not None:
        metrics = {"test_accuracy": acc, "epochs_completed": 3,
                   "cost": {"device": "gpu", "device_count": 2, "wall_seconds": 3600.0,
                            "train_seconds": 3000.0, "gpu_hours": 2.0, "preemptions_survived": 1,
                            "attempts": 2}}
        if name != "nightly-2":  # a run from before the ledger shows -
            metrics["ledger"] = {"training": 2700.0, "total": 3600.0, "goodput": 0.75}
        if promoted is not None:
            metrics["promotion"] = {"promote": promoted, "reason": "test"}
        (d / "report" / "metrics.json").write_text(json.dumps(metrics))
        (d / "report" / "report.html").write_text("<html></html>")


def test_runs_lists_runs_and_writes_an_index_whose_links_resolve(tmp_path, capsys):
    _fake_run(tmp_path, "nightly-2", 0.91, False, "2026-01-02T03:00:00Z")
    _fake_run(tmp_path, "nightly-1", 0.90, True, "2026-01-01T03:00:00Z")
    _fake_run(tmp_path, "nightly-3", None, None, "2026-01-03T03:00:00Z")
    (tmp_path / "not-a-run").mkdir()
    found = runs.collect(str(tmp_path))
    assert [r.name for r in found] == ["nightly-1", "nightly-2", "nightly-3"]
    assert (found[0].promoted, found[1].promoted, found[2].state) == (True, False, "training")
    assert (found[0].gpu_hours, found[0].attempts, found[0].preemptions_survived) == (2.0, 2, 1)
    assert [r.goodput for r in found] == [0.75, None, None]

    assert cli.main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nightly-1   2026-01-01T03:00:00Z   1h00m" in out and "wrote" in out
    header, first, second = out.splitlines()[:3]
    assert header.split()[-1] == "GOODPUT" and first.split()[-1] == "75%" and second.split()[-1] == "-"
    page = (tmp_path / "index.html").read_text()
    assert '<td class="num">75%</td>' in page and ">goodput</th>" in page
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert "nightly-1/report/report.html" in links and "runs_trend.png" in links
    assert "nightly-3/report/report.html" not in links  # no report yet: no link
    for link in links:
        assert (tmp_path / link).is_file(), link
    assert (tmp_path / "runs_trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli.main(["runs", str(tmp_path), "-o", "json", "--no-html"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["test_accuracy"] for r in data] == [0.90, 0.91, None]
    assert [r["goodput"] for r in data] == [0.75, None, None]


def test_runs_of_an_empty_parent(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    assert cli.main(["runs", str(tmp_path / "none")]) == 0
    assert "no runs yet" in (tmp_path / "none" / "index.html").read_text()
    assert cli.main(["runs", str(tmp_path / "typo")]) == 2  # a missing parent is not created
    assert not (tmp_path / "typo").exists()
