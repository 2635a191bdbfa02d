"""The nightly spec's CronJob, triggered once by hand (what `kubectl create job
--from=cronjob/NAME` does), makes a Job that runs the real trainer into its own directory and
promotes its model (the first one always beats an empty serving location).

The nightly schedule is far away (02:30 Berlin), so that test does not wait for the clock; a
second one runs the same spec every minute to see the CronJob controller start a run itself.
"""

import json
import uuid

import pytest
import yaml
from cluster_helpers import REPO, exit_codes, job_pods, local_overrides, wait_for

from jobs.spec import load_spec

pytestmark = pytest.mark.cluster

NIGHTLY = REPO / "examples" / "nightly.yaml"


def job_from_cronjob(cron, name: str) -> dict:
    """The Job `kubectl create job NAME --from=cronjob/CRON` makes."""
    template = cron.spec.job_template
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": template.metadata.labels,
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                 "name": cron.metadata.name, "uid": cron.metadata.uid,
                                 "controller": True}],
        },
        "spec": template.spec,
    }


@pytest.mark.timeout(300)
def test_nightly_cronjob_triggered_once_runs_a_job(kube, launcher, namespace, kubetrain_base,
                                                   tmp_path):
    spec = load_spec(NIGHTLY)
    kube.core.create_namespaced_secret(namespace, {  # the platform team's Secret, a placeholder
        "metadata": {"name": spec.storage.secret},
        "stringData": {spec.storage.secret_key: "{}"}})
    out = launcher("submit", str(NIGHTLY), *local_overrides(spec, tmp_path),
                   "--set", "model=seed_cnn", "--set", "image_size=16", "--set", "epochs=1")
    assert f"cronjob.batch/{spec.name} created" in out.stdout

    cron = kube.batch.read_namespaced_cron_job(spec.name, namespace)
    run_name = f"{spec.name}-manual-{uuid.uuid4().hex[:4]}"
    kube.batch.create_namespaced_job(namespace, kube.api.sanitize_for_serialization(
        job_from_cronjob(cron, run_name)))

    waited = launcher("wait", spec.name, "--timeout", "240", timeout_seconds=260)  # newest run
    assert f"job {run_name} succeeded" in waited.stdout
    assert exit_codes(job_pods(kube, namespace, run_name)) == [0]
    # Each run writes to <output>/<its Job's name>, from the pod's job-name label.
    metrics = json.loads((tmp_path / "runs" / run_name / "report" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1
    if spec.train.promote_to:  # the first run beats "no model there yet": it is promoted
        assert metrics["promotion"]["promote"] is True
        assert (tmp_path / "serving" / "model" / "model.keras").exists()

    status = launcher("status", spec.name)
    assert f"run {run_name}  Succeeded" in status.stdout
    assert "test accuracy" in launcher("logs", spec.name).stdout


@pytest.mark.timeout(180)
def test_the_cronjob_controller_starts_runs_on_schedule(kube, launcher, namespace,
                                                        kubetrain_base, tmp_path):
    # The nightly spec, every minute (its deadlines shortened to fit the period, as the spec
    # requires): the real CronJob controller, in the spec's time zone, creates the run.
    values = yaml.safe_load(NIGHTLY.read_text())
    values.update(schedule="* * * * *", starting_deadline_seconds=30, active_deadline_seconds=50)
    every_minute = tmp_path / "every-minute.yaml"
    every_minute.write_text(yaml.safe_dump(values))
    spec = load_spec(every_minute)
    kube.core.create_namespaced_secret(namespace, {
        "metadata": {"name": spec.storage.secret},
        "stringData": {spec.storage.secret_key: "{}"}})
    launcher("submit", str(every_minute), *local_overrides(spec, tmp_path),
             "--set", "model=seed_cnn", "--set", "image_size=16", "--set", "epochs=1")

    cron = kube.batch.read_namespaced_cron_job(spec.name, namespace)
    (run,) = wait_for("the CronJob controller to start a run (at the next minute)",
                      kube.batch.list_namespaced_job, namespace,
                      lambda jobs: [j for j in jobs if any(
                          o.uid == cron.metadata.uid for o in j.metadata.owner_references or [])],
                      timeout_seconds=90)
    assert "cronjob.kubernetes.io/instantiate" not in (run.metadata.annotations or {})
    wait_for("the run's pod to be scheduled", kube.core.list_namespaced_pod, namespace,
             lambda pods: [p for p in pods if p.spec.node_name],
             label_selector=f"batch.kubernetes.io/job-name={run.metadata.name}")

    launcher("delete", spec.name)  # the CronJob, its runs and their pods
    wait_for("the runs' pods to be gone", kube.core.list_namespaced_pod, namespace,
             lambda pods: not pods, label_selector=f"app.kubernetes.io/instance={spec.name}")
    assert not kube.batch.list_namespaced_cron_job(namespace).items
