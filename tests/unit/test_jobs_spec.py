"""Job spec validation: every bad value is one clear line (exit 2), good specs load frozen."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.spec import SpecError, load_spec, parse_spec, schedule_period_seconds
from trainer.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

BASE = {
    "name": "digits",
    "image": "kubetrain-trainer-cpu:0.1.0",
    "train": {"data": "builtin:digits", "output": "/runs/digits"},
}


def spec_with(**changes):
    values = {**BASE, **changes}
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load(path):
    spec = load_spec(path)
    assert spec.name and spec.image
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_defaults():
    spec = parse_spec(BASE)
    assert (spec.gpus, spec.cpu, spec.memory, spec.shm_size) == (0, "2", "8Gi", "1Gi")
    assert spec.active_deadline_seconds == 86400
    assert spec.storage.credentials == "none"
    assert spec.train == load_config(BASE["train"])  # the trainer's own defaults and validation


BAD = {
    "unknown key": (spec_with(gpu=1), "unknown key 'gpu'; did you mean 'gpus'? valid keys: name, image"),
    "negative gpus": (spec_with(gpus=-1), "key 'gpus': must be >= 0, got -1"),
    "gpus not a number": (spec_with(gpus="two"), "key 'gpus': expected a whole number, got 'two'"),
    "bad cron": (spec_with(schedule="0 25 * * *"), "key 'schedule': '0 25 * * *' is not a valid cron"),
    "cron with seconds": (spec_with(schedule="0 0 3 * * *"), "is not a valid cron expression"),
    "cron macro": (spec_with(schedule="@reboot"), "not a cron macro Kubernetes accepts"),
    "TZ in schedule": (spec_with(schedule="TZ=UTC 0 3 * * *"), "put the time zone in 'time_zone'"),
    "bad time zone": (spec_with(schedule="0 3 * * *", time_zone="Mars/Olympus"),
                      "key 'time_zone': unknown time zone 'Mars/Olympus'"),
    "time zone without schedule": (spec_with(time_zone="Europe/Berlin"), "only used with a 'schedule'"),
    "deadline not shorter than period": (
        spec_with(schedule="0 * * * *", active_deadline_seconds=3600),
        "key 'active_deadline_seconds': 3600 must be shorter than the schedule's period (3600 s)"),
    "missing name": (spec_with(name=None), "missing required key 'name'"),
    "bad name": (spec_with(name="Digits_1"), "key 'name': 'Digits_1' must be at most 63 lowercase"),
    "cron name too long": (spec_with(name="a" * 53, schedule="@daily"), "must be at most 52"),
    "latest image": (spec_with(image="trainer:latest"), "must be pinned to a tag (not :latest)"),
    "untagged image": (spec_with(image="registry:5000/trainer"), "must be pinned"),
    "bad memory": (spec_with(memory="lots"), "key 'memory': 'lots' is not a Kubernetes quantity"),
    "memory without unit": (spec_with(memory=8), "key 'memory': '8' is too small; use a suffix"),
    "shm over memory": (spec_with(memory="2Gi", shm_size="2Gi"), "key 'shm_size': 2Gi must be smaller"),
    "bad credentials": (spec_with(storage={"credentials": "password"}),
                        "key 'storage.credentials': 'password' is not one of: none, workload-identity, secret"),
    "secret without name": (spec_with(storage={"credentials": "secret"}), "needs the Secret's name"),
    "unknown storage key": (spec_with(storage={"bucket": "x"}), "unknown key 'storage.bucket'"),
    "bad toleration": (spec_with(tolerations=[{"key": "gpu", "operator": "Maybe"}]),
                       "key 'tolerations[0].operator': 'Maybe' is not one of: Equal, Exists"),
    "unknown toleration key": (spec_with(tolerations=[{"keys": "gpu"}]),
                               "unknown key 'tolerations[0].keys'; did you mean 'key'?"),
    "reserved env": (spec_with(env={"HOME": "/root"}), "key 'env.HOME': set by kubetrain itself"),
    "bad pull policy": (spec_with(image_pull_policy="Sometimes"), "is not one of: IfNotPresent, Always, Never"),
    "missing train": (spec_with(train=None), "missing required key 'train'"),
    "unknown train key": (spec_with(train={**BASE["train"], "epoch": 3}),
                          "train: unknown config key 'epoch'; did you mean 'epochs'?"),
    "bad train value": (spec_with(train={**BASE["train"], "model": "vgg"}),
                        "train: config key 'model': 'vgg' is not one of: seed_cnn, resnet_small"),
    "no output": (spec_with(train={"data": "builtin:digits"}), "no output"),
}


@pytest.mark.parametrize("values,expected", BAD.values(), ids=BAD.keys())
def test_bad_spec_is_one_clear_line(values, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(values, "spec.yaml")
    message = str(info.value)
    assert message.startswith("spec.yaml: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("schedule,tz,period", [
    ("0 3 * * *", "Etc/UTC", 86400),
    ("*/15 * * * *", "Etc/UTC", 900),
    ("0 3 * * 1-5", "Etc/UTC", 86400),
    ("@weekly", "Etc/UTC", 7 * 86400),
], ids=["daily", "quarter-hour", "weekdays", "weekly"])
def test_schedule_period(schedule, tz, period):
    assert schedule_period_seconds(schedule, tz) == period


def test_schedule_period_counts_the_short_daylight_saving_night():
    assert 23 * 3600 <= schedule_period_seconds("30 2 * * *", "America/New_York") < 86400


def test_cron_defaults_fit_inside_the_period():
    spec = parse_spec(spec_with(schedule="0 * * * *"))
    assert spec.starting_deadline_seconds == 360
    assert spec.active_deadline_seconds == 3600 - 360


def test_train_overrides_are_validated_too():
    assert parse_spec(BASE, train_overrides={"epochs": 2}).train.epochs == 2
    with pytest.raises(SpecError, match="'epochs': must be >= 1"):
        parse_spec(BASE, train_overrides={"epochs": 0})


@pytest.mark.parametrize("name,values,expected", [
    ("unknown key", spec_with(gpu=1), "unknown key 'gpu'"),
    ("negative gpus", spec_with(gpus=-2), "key 'gpus': must be >= 0"),
    ("bad cron", spec_with(schedule="every night"), "key 'schedule'"),
    ("bad time zone", spec_with(schedule="@daily", time_zone="Europe/Atlantis"), "key 'time_zone'"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_cli_spec_error_exit_2_one_line(tmp_path, name, values, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run([sys.executable, "-m", "jobs", "render", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0]


def test_cli_missing_file_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs", "render", str(tmp_path / "nope.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "cannot read the spec" in proc.stderr


def test_docs_describe_every_spec_key():
    from jobs.spec import key_docs

    docs = (REPO / "docs" / "launcher.md").read_text()
    missing = [key for key, *_ in key_docs() if f"| `{key}` |" not in docs]
    assert not missing, f"docs/launcher.md has no row for: {', '.join(missing)}"
