"""Every example spec, submitted by the launcher, is accepted; its Job's pods are created and
scheduled (a CronJob is created); `delete` takes the Job, its pods and its ConfigMap away.

Data, output and promote_to are overridden to local ones: nothing may reach a bucket from here.
"""

import kueue
import pytest
from cluster_helpers import EXAMPLES, NODE_NAME, job_pods, local_overrides, wait_for

from jobs.spec import load_spec

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(240)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_is_accepted_scheduled_and_deleted(example, launcher, kube, namespace,
                                                   kubetrain_base, tmp_path, request):
    spec = load_spec(example)
    if spec.queue:  # real Kueue admits it, from a LocalQueue of that name with room for it
        request.getfixturevalue("kueue")
        kueue.apply_objects(kube.api, kueue.queues(f"cq-{namespace}", namespace, spec.queue,
                                                   gpus=spec.gpus * spec.workers, cpu="64",
                                                   memory="512Gi", ephemeral_storage="1Ti"))
    if spec.storage.credentials == "secret":  # made by the platform team in real life
        kube.core.create_namespaced_secret(namespace, {
            "metadata": {"name": spec.storage.secret},
            "stringData": {spec.storage.secret_key: "{}"}})

    out = launcher("submit", str(example), *local_overrides(spec, tmp_path))
    assert f"/{spec.name} created in namespace {namespace}" in out.stdout

    if spec.scheduled:
        cron = kube.batch.read_namespaced_cron_job(spec.name, namespace)
        assert cron.spec.schedule == spec.schedule
        assert cron.spec.time_zone == spec.time_zone
        assert cron.spec.concurrency_policy == "Forbid"
    else:
        job = kube.batch.read_namespaced_job(spec.name, namespace)
        assert job.spec.backoff_limit == spec.backoff_limit
        pods = wait_for(
            f"a scheduled, started pod of job {spec.name}", kube.core.list_namespaced_pod,
            namespace, lambda pods: [p for p in pods
                                     if p.spec.node_name and p.status.phase != "Pending"],
            label_selector=f"batch.kubernetes.io/job-name={spec.name}")
        assert pods[0].spec.node_name == NODE_NAME
        limits = pods[0].spec.containers[0].resources.limits
        assert int(limits.get("nvidia.com/gpu", 0)) == spec.gpus
        if spec.queue:  # created suspended; started because Kueue admitted its Workload
            (workload,) = kueue.workloads_of(kube.api, namespace, spec.name)
            assert kueue.condition(workload, "Admitted") == "True"

    out = launcher("delete", spec.name)
    assert "deleted" in out.stdout
    wait_for("the job and its pods to be gone", kube.core.list_namespaced_pod, namespace,
             lambda pods: not pods, label_selector=f"app.kubernetes.io/instance={spec.name}")
    assert not kube.batch.list_namespaced_job(namespace).items
    assert not kube.batch.list_namespaced_cron_job(namespace).items
    assert not [cm for cm in kube.core.list_namespaced_config_map(namespace).items
                if cm.metadata.name == spec.config_map_name]
    assert not job_pods(kube, namespace, spec.name)
