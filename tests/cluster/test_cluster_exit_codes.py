"""The trainer's real exit codes meet the real Job controller through the rendered
podFailurePolicy: 2 and 3 fail the Job at once, 1 is retried up to backoffLimit, 143
(SIGTERM after a checkpoint) is retried without spending the budget. `wait` says why.

Each Job is rendered from examples/kind.yaml by the launcher's own `render`; only the
container's command or args are changed to produce each exit.
"""


import pytest
from cluster_helpers import exit_codes, job_pods, submit_rendered

pytestmark = pytest.mark.cluster


def python(code: str) -> list[str]:
    return ["python", "-c", code]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("change", "code", "meaning"),
    [
        (lambda c, j: c["args"].append("--no-such-flag"), 2, "bad configuration"),
        (lambda c, j: c["args"].__setitem__(c["args"].index("--data") + 1,
                                            "/nonexistent/dataset"), 3, "bad or missing data"),
    ],
    ids=["exit-2-bad-flag", "exit-3-missing-data"],
)
def test_config_and_data_errors_fail_the_job_at_once(change, code, meaning, kube, launcher,
                                                     namespace, kubetrain_base, tmp_path):
    name = submit_rendered(kube, namespace, tmp_path / "run", change)
    result = launcher("wait", name, "--timeout", "150", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PodFailurePolicy" in result.stderr
    assert f"exit {code} ({meaning}" in result.stderr
    assert exit_codes(job_pods(kube, namespace, name)) == [code]  # never retried
    job = kube.batch.read_namespaced_job(name, namespace)
    assert job.status.failed == 1
    assert job.spec.backoff_limit >= 1  # a retry was allowed, the policy did not take it


@pytest.mark.timeout(240)
def test_a_crash_is_retried_up_to_the_backoff_limit(kube, launcher, namespace, kubetrain_base,
                                                    tmp_path):
    def crash(container, job):
        container["command"] = python("import sys; print('boom', flush=True); sys.exit(1)")
        container["args"] = []

    name = submit_rendered(kube, namespace, tmp_path / "run", crash)
    result = launcher("wait", name, "--timeout", "200", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BackoffLimitExceeded" in result.stderr
    assert "exit 1 (unexpected error" in result.stderr
    assert "| boom" in result.stderr  # the last log line, from FallbackToLogsOnError
    backoff_limit = kube.batch.read_namespaced_job(name, namespace).spec.backoff_limit
    assert exit_codes(job_pods(kube, namespace, name)) == [1] * (backoff_limit + 1)


@pytest.mark.timeout(180)
def test_sigterm_exit_143_is_retried_without_spending_the_budget(kube, launcher, namespace,
                                                                 kubetrain_base, tmp_path):
    marker = tmp_path / "preempted-once"

    def preempted_once(container, job):
        # First attempt: "checkpoint and exit 143" as the trainer does on SIGTERM; then succeed.
        container["command"] = python(
            "import os, sys\n"
            f"if not os.path.exists({str(marker)!r}):\n"
            f"    open({str(marker)!r}, 'w').close(); sys.exit(143)\n"
            "print('resumed')")
        container["args"] = []
        job["spec"]["backoffLimit"] = 0  # any counted failure would fail the Job

    name = submit_rendered(kube, namespace, tmp_path / "run", preempted_once)
    result = launcher("wait", name, "--timeout", "150", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exit_codes(job_pods(kube, namespace, name)) == [143, 0]


