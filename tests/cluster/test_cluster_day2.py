"""Day 2 on the real control plane, as the launcher's ServiceAccount (k8s/base's Role only):
a nightly CronJob submitted, changed in place by a second submit (server-side apply: same uid,
its runs kept), validated by --dry-run=server, run now twice (each run into its own directory,
the second one's progress followed through `status` as its epochs advance), compared by
`jobs runs` (index.html whose links resolve), suspended and resumed."""

import json
import re
import time

import pytest
from cluster_helpers import REPO, Launcher, local_overrides, token_kubeconfig

from jobs.spec import load_spec

pytestmark = pytest.mark.cluster

NIGHTLY = REPO / "examples" / "nightly.yaml"
FAST = ["--set", "model=seed_cnn", "--set", "image_size=16", "--set", "batch_size=16",
        "--set", "steps_per_execution=1"]


@pytest.fixture
def jobs(control_plane, kube, namespace, kubetrain_base, tmp_path) -> Launcher:
    path = token_kubeconfig(control_plane, kube, namespace, "kubetrain-launcher",
                            tmp_path / "launcher.kubeconfig")
    return Launcher(path, namespace)


def _run_now(jobs: Launcher, name: str) -> str:
    out = jobs("run-now", name).stdout
    match = re.search(r"job\.batch/(\S+) created", out)
    assert match, out
    return match.group(1)


@pytest.mark.timeout(420)
def test_nightly_day2(jobs, kube, namespace, tmp_path):
    spec = load_spec(NIGHTLY)
    kube.core.create_namespaced_secret(namespace, {
        "metadata": {"name": spec.storage.secret}, "stringData": {spec.storage.secret_key: "{}"}})
    flags = [*local_overrides(spec, tmp_path), *FAST]

    created = jobs("submit", str(NIGHTLY), *flags, "--set", "epochs=1")
    assert f"cronjob.batch/{spec.name} created" in created.stdout
    uid = kube.batch.read_namespaced_cron_job(spec.name, namespace).metadata.uid
    first = _run_now(jobs, spec.name)
    assert jobs("wait", first, "--timeout", "4m", timeout_seconds=260).returncode == 0

    # A changed spec: the CronJob is updated in place, its run history kept.
    dry = jobs("submit", str(NIGHTLY), *flags, "--set", "epochs=6", "--dry-run=server")
    assert "configured (updated in place; its runs kept) (server dry run)" in dry.stdout
    assert "epochs: 1" in _config_map(kube, namespace, spec)  # the dry run changed nothing
    changed = jobs("submit", str(NIGHTLY), *flags, "--set", "epochs=6", "-o", "json")
    items = json.loads(changed.stdout)["items"]
    assert [i["kind"] for i in items] == ["ConfigMap", "CronJob"]
    cron = kube.batch.read_namespaced_cron_job(spec.name, namespace)
    assert cron.metadata.uid == uid and "epochs: 6" in _config_map(kube, namespace, spec)
    managers = {(m.manager, m.operation) for m in cron.metadata.managed_fields}
    assert ("kubetrain", "Apply") in managers
    assert f"run {first}  Succeeded" in jobs("status", spec.name).stdout

    # The second run's progress, read from its run directory while it trains.
    second = _run_now(jobs, spec.name)
    epochs_seen, looks = _follow_progress(jobs, second)
    assert len(epochs_seen) >= 2 and epochs_seen == sorted(epochs_seen), looks
    assert jobs("wait", second, "--timeout", "4m", timeout_seconds=260).returncode == 0
    text = jobs("status", second).stdout
    assert "progress: finished: test accuracy" in text and f"output {tmp_path / 'runs' / second}" in text

    runs = jobs("runs", str(tmp_path / "runs"), "-o", "wide")
    lines = runs.stdout.splitlines()
    assert any(line.startswith(first) for line in lines) and any(line.startswith(second) for line in lines)
    index = (tmp_path / "runs" / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', index)
    assert {f"{first}/report/report.html", f"{second}/report/report.html"} <= set(links)
    for link in links:
        assert (tmp_path / "runs" / link).is_file(), link

    assert "cronjob.batch/" + spec.name + " suspended" in jobs("suspend", spec.name).stdout
    assert kube.batch.read_namespaced_cron_job(spec.name, namespace).spec.suspend is True
    assert "suspended" in jobs("status", spec.name).stdout
    jobs("resume", spec.name)
    assert kube.batch.read_namespaced_cron_job(spec.name, namespace).spec.suspend is False

    # A one-off Job that ran is never changed: the way out is in the message.
    kind = REPO / "examples" / "kind.yaml"
    local = ["--set", "data=builtin:digits", "--set", f"output={tmp_path / 'one-off'}", *FAST]
    jobs("submit", str(kind), *local, "--set", "epochs=1")
    refused = jobs("submit", str(kind), *local, "--set", "epochs=2", check=False)
    assert refused.returncode == 1 and "python -m jobs delete" in refused.stderr
    jobs("delete", "digits-kind")


def _config_map(kube, namespace, spec) -> str:
    return kube.core.read_namespaced_config_map(spec.config_map_name, namespace).data["config.yaml"]


def _follow_progress(jobs: Launcher, name: str, timeout_seconds: float = 240):
    """The completed-epoch counts `status` showed while the run was training (and every look,
    for the failure message). In-process, through the same code as `status -o json`
    (jobs.status.status_object), so a look takes milliseconds, not a process start."""
    from jobs.cluster import connect
    from jobs.status import lookup, status_object

    cluster = connect(str(jobs.kubeconfig))
    seen: list[int] = []
    looks = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        obj = status_object(lookup(cluster, jobs.namespace, name))
        record = obj.get("progress") or {}
        looks.append((obj["state"], record.get("state"), record.get("epoch"),
                      obj.get("progress_unavailable")))
        if record.get("state") == "finished" or obj["state"] in ("Succeeded", "Failed"):
            break
        if record.get("state") == "training" and record["epoch"] not in seen:
            seen.append(record["epoch"])
        time.sleep(0.2)
    return seen, looks
