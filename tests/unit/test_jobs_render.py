"""Rendering: golden files for every example spec, and the properties each manifest must keep.

Regenerate the golden files after an intended change with
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_jobs_render.py
and review the diff. The trainer config inside the ConfigMap and the spec hash are replaced by
placeholders in the golden files (they follow the trainer's defaults, tested on their own here).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs import render
from jobs.spec import load_spec, parse_spec, schedule_period_seconds
from trainer.config import load_config
from trainer.core.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_PEER_LOST,
    EXIT_PREEMPTED,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

BASE = {"name": "digits", "image": "trainer:0.1.0",
        "train": {"data": "builtin:digits", "output": "gs://bucket/runs/digits/"}}


def normalized(manifests: list[dict]) -> list[dict]:
    out = copy.deepcopy(manifests)
    for m in out:
        if m["kind"] == "ConfigMap":
            m["data"][render.CONFIG_FILE] = "<the trainer's resolved config: test_config_map_*>"
        annotations = m["metadata"].get("annotations") or {}
        if render.SPEC_HASH_ANNOTATION in annotations:
            annotations[render.SPEC_HASH_ANNOTATION] = "<spec hash: test_spec_hash_*>"
    return out


def workload(manifests: list[dict]) -> dict:
    return manifests[1]


def job_spec_of(m: dict) -> dict:
    return m["spec"]["jobTemplate"]["spec"] if m["kind"] == "CronJob" else m["spec"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden(path):
    text = render.to_yaml(normalized(render.render(load_spec(path))))
    golden = GOLDEN / path.name
    if UPDATE or not golden.exists():
        if not UPDATE and os.environ.get("CI") == "true":
            pytest.fail(f"{golden} is missing; run UPDATE_GOLDEN=1 pytest {__file__}")
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; review, then UPDATE_GOLDEN=1 to accept"


def test_render_command_prints_kubectl_ready_yaml():
    proc = subprocess.run([sys.executable, "-m", "jobs", "render", "examples/kind.yaml",
                           "--set", "epochs=1"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    assert yaml.safe_load(docs[0]["data"]["config.yaml"])["epochs"] == 1


def test_render_imports_no_cluster_client():
    code = ("import sys, jobs.render, jobs.spec, jobs.cluster, jobs.cli; "
            "jobs.render.render(jobs.spec.load_spec('examples/nightly.yaml')); "
            "assert 'kubernetes' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_config_map_carries_the_resolved_trainer_config():
    spec = parse_spec(BASE)
    cm = render.render(spec)[0]
    text = cm["data"][render.CONFIG_FILE]
    assert text == spec.train.to_yaml()
    assert load_config(yaml.safe_load(text)) == spec.train  # the trainer reads back the same config
    pod = render.pod_spec(spec)
    assert pod["containers"][0]["args"][:2] == ["--config", "/etc/kubetrain/config.yaml"]
    assert {"name": "config", "mountPath": "/etc/kubetrain", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


def test_pod_failure_policy_follows_the_trainer_exit_codes():
    spec = job_spec_of(workload(render.render(parse_spec(BASE))))
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    ignore_codes = [r for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    ignore_conditions = [r for r in rules if r["action"] == "Ignore" and "onPodConditions" in r]
    assert fail[0]["onExitCodes"]["values"] == [EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED]
    assert ignore_codes[0]["onExitCodes"]["values"] == [EXIT_PEER_LOST, EXIT_PREEMPTED]
    assert ignore_conditions[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_pod_security(path):
    spec = load_spec(path)
    pod = job_spec_of(workload(render.render(spec)))["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == env["TMPDIR"] == env["KUBETRAIN_SCRATCH"] == "/scratch"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/scratch"]]["emptyDir"]["sizeLimit"] == spec.scratch_size
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.shm_size}
    # ephemeral-storage: the scheduler refuses nodes without room for /scratch (no eviction later)
    assert c["resources"]["requests"] == {"cpu": spec.cpu, "memory": spec.memory,
                                          "ephemeral-storage": spec.scratch_size}
    assert int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) == spec.gpus
    labels = workload(render.render(spec))["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "kubetrain"
    assert labels["app.kubernetes.io/instance"] == spec.name


def test_job_deadlines_and_ttl():
    job = workload(render.render(parse_spec({**BASE, "ttl_seconds_after_finished": 3600})))
    assert job["kind"] == "Job"
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--output") + 1] == "gs://bucket/runs/digits"


def test_cron_job_runs_never_overlap_and_write_their_own_directory():
    spec = parse_spec({**BASE, "schedule": "0 3 * * *", "time_zone": "Europe/Berlin"})
    cron = workload(render.render(spec))
    assert cron["kind"] == "CronJob"
    s = cron["spec"]
    assert (s["schedule"], s["timeZone"], s["concurrencyPolicy"]) == ("0 3 * * *", "Europe/Berlin", "Forbid")
    period = schedule_period_seconds("0 3 * * *", "Europe/Berlin")
    assert 0 < s["startingDeadlineSeconds"] < period
    assert s["jobTemplate"]["spec"]["activeDeadlineSeconds"] < period
    assert s["successfulJobsHistoryLimit"] >= 1 and s["failedJobsHistoryLimit"] >= 1
    c = s["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][c["args"].index("--output") + 1] == "gs://bucket/runs/digits/$(KUBETRAIN_JOB_NAME)"
    (ref,) = [e for e in c["env"] if e["name"] == "KUBETRAIN_JOB_NAME"]
    assert ref["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    # $(VAR) expansion needs the variable defined; no shell is involved
    assert c["command"] == ["python", "-m", "trainer"]


def test_kueue_queue_suspends_the_job():
    job = workload(render.render(parse_spec({**BASE, "queue": "team-a"})))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    cron = workload(render.render(parse_spec({**BASE, "queue": "team-a", "schedule": "@daily"})))
    assert cron["spec"]["jobTemplate"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "suspend" not in workload(render.render(parse_spec(BASE)))["spec"]


@pytest.mark.parametrize("mode,expect_secret,expect_wi", [
    ("none", False, False), ("secret", True, False), ("workload-identity", False, True)])
def test_storage_credentials(mode, expect_secret, expect_wi):
    storage = {"credentials": mode, **({"secret": "gcs-key"} if mode == "secret" else {})}
    pod = render.pod_spec(parse_spec({**BASE, "storage": storage}))
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("GOOGLE_APPLICATION_CREDENTIALS" in env) is expect_secret
    assert ("credentials" in volumes) is expect_secret
    if expect_secret:
        assert volumes["credentials"]["secret"]["secretName"] == "gcs-key"
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"
    assert (pod.get("nodeSelector", {}).get("iam.gke.io/gke-metadata-server-enabled") == "true") is expect_wi


def test_namespace_flag_and_spec_namespace():
    spec = parse_spec({**BASE, "namespace": "ml"})
    assert all(m["metadata"]["namespace"] == "ml" for m in render.render(spec))
    assert all(m["metadata"]["namespace"] == "other" for m in render.render(spec, "other"))
    assert all("namespace" not in m["metadata"] for m in render.render(parse_spec(BASE)))


def test_spec_hash_is_stable_and_changes_with_the_spec():
    def h(values):
        return workload(render.render(parse_spec(values)))["metadata"]["annotations"][
            render.SPEC_HASH_ANNOTATION]

    assert h(BASE) == h(copy.deepcopy(BASE))
    assert h(BASE) != h({**BASE, "gpus": 1})
    assert h(BASE) != h({**BASE, "train": {**BASE["train"], "epochs": 3}})
    # the namespace is where it goes, not what it is
    assert h(BASE) == h({**BASE, "namespace": "ml"})


def test_user_env_is_passed_sorted():
    pod = render.pod_spec(parse_spec({**BASE, "env": {"B": "2", "STORAGE_EMULATOR_HOST": "http://gcs:4443"}}))
    names = [e["name"] for e in pod["containers"][0]["env"]]
    assert names[-2:] == ["B", "STORAGE_EMULATOR_HOST"]
