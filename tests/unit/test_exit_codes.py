"""The exit-code table (trainer/core/errors.py) is the one source the CLI, the Job's podFailurePolicy,
`jobs status/wait` and the README follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import follow, render
from trainer.core import errors

REPO = Path(__file__).resolve().parents[2]


def test_codes_are_unique_and_actions_known():
    codes = [row.code for row in errors.EXIT_CODES]
    assert len(codes) == len(set(codes))
    assert {row.job_action for row in errors.EXIT_CODES} <= {errors.FAIL_JOB, errors.IGNORE, errors.COUNT}


def test_pod_failure_policy_lists_every_fail_job_and_ignore_code():
    rules = render.pod_failure_policy()["rules"]
    by_action = {r["action"]: r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r}
    assert by_action == {
        errors.FAIL_JOB: [r.code for r in errors.EXIT_CODES if r.job_action == errors.FAIL_JOB],
        errors.IGNORE: [r.code for r in errors.EXIT_CODES if r.job_action == errors.IGNORE],
    }
    assert errors.EXIT_OK not in by_action[errors.FAIL_JOB] + by_action[errors.IGNORE]


@pytest.mark.parametrize("row", errors.EXIT_CODES, ids=lambda r: str(r.code))
def test_jobs_follow_explains_each_code_from_the_table(row):
    pod = {"status": {"containerStatuses": [
        {"name": render.CONTAINER, "state": {"terminated": {"exitCode": row.code}}}]}}
    assert follow.exit_summary(pod) == f"exit {row.code} ({row.explain()})"


def test_unknown_code_is_explained_as_unexpected():
    assert errors.exit_code(77) == errors.exit_code(errors.EXIT_UNEXPECTED)


@pytest.mark.parametrize("cls,prefix", [
    (errors.ConfigError, "configuration error"),
    (errors.DataError, "data error"),
    (errors.StorageError, "error"),
    (errors.Preempted, "preempted"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_cli_prints_the_tables_prefix(capsys, monkeypatch, cls, prefix):
    from trainer import __main__ as cli

    def fail(_argv):
        raise cls("something   went\nwrong")

    monkeypatch.setattr(cli, "_train", fail)
    assert cli.main(["--data", "x"]) == cls.exit_code
    assert capsys.readouterr().err == f"{prefix}: something went wrong\n"  # one line


@pytest.mark.parametrize("row", errors.EXIT_CODES, ids=lambda r: str(r.code))
def test_readme_documents_every_code(row):
    assert f"\n| {row.code} | " in (REPO / "README.md").read_text()
