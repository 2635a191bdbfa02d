"""Hostile input to the launcher and its tools ends in one line and the documented exit code,
never a traceback (#22): a spec that is not UTF-8; values the API server would reject later
(an empty image tag, integers beyond its range, an env variable given twice) refused at render;
`jobs runs` on a typo, a file, an unwritable directory, or over runs whose files are binary or
mistyped (those runs are shown with a warning; the others are listed as usual)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs import runs
from jobs.checks import INT32_MAX
from jobs.spec import SpecError, parse_spec
from trainer.training import progress

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "digits", "image": "kubetrain-trainer-cpu:0.1.0",
        "train": {"data": "builtin:digits", "output": "/runs/digits"}}
DIGEST = "sha256:" + "0123456789abcdef" * 4


def jobs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ----------------------------------------------------------------------------- the spec file


@pytest.mark.parametrize("content, expected", [
    pytest.param(b"name: digits\xff\n", "not UTF-8 text (bad byte at offset 12)", id="latin1-byte"),
    pytest.param(b"\xff\xfen\x00a\x00m\x00e\x00", "not UTF-8 text (bad byte at offset 0)", id="utf16"),
    pytest.param(b"name: a\nname: b\n", "line 2: key 'name' appears twice", id="duplicate-key"),
])
def test_an_unreadable_spec_file_is_one_line_exit_2(tmp_path, content, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    line = one_error_line(jobs_cli("render", str(path)), 2)
    assert expected in line and "spec.yaml" in line


def test_a_huge_spec_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    assert "larger than 1 MiB" in one_error_line(jobs_cli("render", str(path)), 2)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("image", [
    "kubetrain:", "registry.example:5000/kubetrain:", "kubetrain@sha256:", "kubetrain:@" + DIGEST,
    "kubetrain:v1@sha256:abc", "kubetrain:-v1", ":v1", "Kubetrain:v1", "kubetrain:v1:v2",
    "kubetrain@sha256:" + "0" * 40, "kube trainer:v1",
])
def test_a_malformed_image_reference_is_refused(image):
    with pytest.raises(SpecError, match="key 'image'"):
        parse_spec({**BASE, "image": image})


@pytest.mark.parametrize("image", [
    "kubetrain-trainer-cpu:0.1.0", "localhost:5000/kubetrain:1", "registry.example:5000/a/b_c:v1.2-x",
    "kubetrain@" + DIGEST, "europe-docker.pkg.dev/p/kubetrain/trainer:0.1.0@" + DIGEST,
])
def test_a_valid_image_reference_is_kept(image):
    assert parse_spec({**BASE, "image": image}).image == image


@pytest.mark.parametrize("key", ["backoff_limit", "termination_grace_period_seconds",
                                 "ttl_seconds_after_finished", "active_deadline_seconds", "gpus"])
def test_integers_beyond_the_api_range_are_refused(key):
    assert parse_spec({**BASE, key: INT32_MAX - 1 if key != "gpus" else 1})
    with pytest.raises(SpecError, match=f"key '{key}': must be at most {INT32_MAX}"):
        parse_spec({**BASE, key: INT32_MAX + 1})
    with pytest.raises(SpecError, match=f"key '{key}': must be at most {INT32_MAX}"):
        parse_spec({**BASE, key: 10**30})


def test_a_variable_in_env_and_env_from_secret_is_refused():
    with pytest.raises(SpecError, match="env_from_secret.WANDB_PROJECT'.*also set in 'env'"):
        parse_spec({**BASE, "env": {"WANDB_PROJECT": "a"},
                    "env_from_secret": {"WANDB_PROJECT": "wandb/project"}})


def test_a_variable_the_pod_sets_itself_is_refused():
    with pytest.raises(SpecError, match="env.PYTHONUNBUFFERED'.*set by kubetrain itself"):
        parse_spec({**BASE, "env": {"PYTHONUNBUFFERED": "0"}})


def test_a_duplicate_env_key_in_the_file_is_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE) + "env:\n  WANDB_PROJECT: a\n  WANDB_PROJECT: b\n")
    assert "key 'WANDB_PROJECT' appears twice" in one_error_line(jobs_cli("render", str(path)), 2)


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE) + "env: &e {A: '1'}\nnode_selector:\n  <<: {pool: a}\n  pool: b\n")
    proc = jobs_cli("render", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "pool: b" in proc.stdout


# ----------------------------------------------------------------------------- jobs runs


def _run(parent: Path, name: str, metrics: bytes | None, record: dict | None = None) -> None:
    (parent / name / "report").mkdir(parents=True)
    if metrics is not None:
        (parent / name / "report" / "metrics.json").write_bytes(metrics)
    if record is not None:
        (parent / name / progress.FILE).write_text(json.dumps({"format": progress.FORMAT, **record}))


def test_runs_on_a_missing_path_reports_the_typo_and_creates_nothing(tmp_path):
    line = one_error_line(jobs_cli("runs", str(tmp_path / "nightyl")), 2)
    assert "no such directory; check the path" in line
    assert not (tmp_path / "nightyl").exists()


def test_runs_on_a_file_is_one_line(tmp_path):
    (tmp_path / "runs.txt").write_text("x")
    assert "is a file, not a directory of runs" in one_error_line(jobs_cli("runs", str(tmp_path / "runs.txt")), 2)


def test_runs_into_an_unwritable_place_prints_the_table_then_one_line(tmp_path):
    _run(tmp_path, "n-1", json.dumps({"test_accuracy": 0.9}).encode())
    (tmp_path / "index.html").mkdir()  # as root, a directory in the way is what cannot be written
    proc = jobs_cli("runs", str(tmp_path))
    line = one_error_line(proc, 2)
    assert "cannot write" in line and "index.html" in line and "--no-html" in line
    assert "n-1" in proc.stdout and "0.9000" in proc.stdout
    assert jobs_cli("runs", str(tmp_path), "--no-html").returncode == 0


def test_runs_over_broken_metrics_lists_every_run_with_warnings(tmp_path):
    _run(tmp_path, "binary", bytes(range(256)) * 4)
    _run(tmp_path, "list", b"[1, 2]")
    _run(tmp_path, "deep", b"[" * 100000 + b"]" * 100000)
    _run(tmp_path, "typed", json.dumps({"test_accuracy": "high", "cost": [1], "promotion": 3,
                                        "epochs_completed": "x"}).encode(),
         {"state": 7, "started": 5, "epoch": "one"})
    _run(tmp_path, "bool-acc", json.dumps({"test_accuracy": True, "promotion": {"promote": "yes"}}).encode())
    _run(tmp_path, "good", json.dumps({"test_accuracy": 0.9, "epochs_completed": 3}).encode())
    proc = jobs_cli("runs", str(tmp_path), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    found = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(found) == {"binary", "list", "deep", "typed", "bool-acc", "good"}
    assert found["good"]["test_accuracy"] == 0.9 and found["good"]["problems"] == []
    assert "not UTF-8 text" in found["binary"]["problems"][0]
    assert "not a JSON object" in found["list"]["problems"][0]
    assert "not a JSON object" in found["deep"]["problems"][0]
    typed = found["typed"]
    assert (typed["test_accuracy"], typed["epochs"], typed["started"], typed["promoted"]) == (None,) * 4
    assert {p.split("key ")[1].split(" ")[0] for p in typed["problems"]} >= {
        "'test_accuracy'", "'cost'", "'promotion'", "'epochs_completed'", "'state'", "'started'"}
    assert found["bool-acc"]["test_accuracy"] is None and found["bool-acc"]["promoted"] is False
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == sum(len(r["problems"]) for r in found.values())
    assert (tmp_path / "index.html").is_file()


def test_runs_over_a_huge_metrics_file_is_bounded(tmp_path, monkeypatch):
    from trainer.storage import small_files

    monkeypatch.setattr(small_files, "MAX_SMALL_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(small_files.read_text, "__defaults__", (1 << 20,))
    _run(tmp_path, "huge", b'{"a": "' + b"x" * (2 << 20) + b'"}')
    (found,) = runs.collect(str(tmp_path))
    assert found.state == "unknown" and "larger than 1 MiB" in found.problems[0]
