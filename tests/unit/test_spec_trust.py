"""The launcher refuses what would leak or misfire: credentials in env, arguments that read as
flags or $(VAR), values with a trailing newline; long bad values are quoted briefly; a broken
kubeconfig is a usage error (exit 2) in one line; a short grace period is warned about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.render import render
from jobs.spec import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "digits", "image": "kubetrain-trainer-cpu:0.1.0",
        "train": {"data": "builtin:digits", "output": "/runs/digits"}}


def jobs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("changes, message", [
    pytest.param({"name": "digits\n"}, "key 'name'", id="name"),
    pytest.param({"namespace": "team-a\n"}, "key 'namespace'", id="namespace"),
    pytest.param({"memory": "8Gi\n"}, "key 'memory'", id="quantity"),
    pytest.param({"train": {"data": "builtin:digits", "output": "gs://bucket\n/runs"}},
                 "control character", id="bucket"),
])
def test_a_trailing_newline_is_refused(changes, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **changes})


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "HF_TOKEN", "DB_PASSWORD"])
def test_credential_env_is_refused_with_the_way_to_pass_it(name):
    with pytest.raises(SpecError, match=f"env.{name}': looks like a credential.*env_from_secret"):
        parse_spec({**BASE, "env": {name: "s3cr3t"}})


def test_env_from_secret_renders_a_secret_reference():
    spec = parse_spec({**BASE, "env_from_secret": {"WANDB_API_KEY": "wandb/api-key"}})
    job = next(m for m in render(spec, "ns") if m["kind"] == "Job")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WANDB_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}} in env
    assert "s3cr3t" not in yaml.safe_dump(env)
    with pytest.raises(SpecError, match="expected SECRET/KEY"):
        parse_spec({**BASE, "env_from_secret": {"WANDB_API_KEY": "no-key"}})


@pytest.mark.parametrize("key, value", [
    ("data", "--epochs=999"), ("output", "/runs/$(HOSTNAME)"), ("output", "-o"),
])
def test_argument_values_that_misfire_are_refused_at_render_time(key, value):
    train = {**BASE["train"], key: value}
    with pytest.raises(SpecError, match=f"train.{key}'.*may not start with '-' or contain"):
        parse_spec({**BASE, "train": train})


def test_alias_bomb_in_a_spec_is_one_short_line(tmp_path):
    anchors = "".join(f"  - &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))
    (tmp_path / "spec.yaml").write_text(
        "name: digits\nimage: x:1\ntrain: {data: builtin:digits, output: /o}\n"
        f"gpus:\n  - &a [x,x,x,x,x,x,x,x,x]\n{anchors}")
    proc = jobs_cli("render", str(tmp_path / "spec.yaml"))
    assert proc.returncode == 2
    assert len(proc.stderr) < 400 and proc.stderr.count("\n") == 1, proc.stderr[:500]


def test_render_warns_about_a_short_grace_period_and_passes_it_on(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**BASE, "termination_grace_period_seconds": 10}))
    proc = jobs_cli("render", str(tmp_path / "spec.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: termination_grace_period_seconds is 10: under 30 s" in proc.stderr
    assert "KUBETRAIN_TERMINATION_GRACE_SECONDS" in proc.stdout
    quiet = jobs_cli("render", str(REPO / "examples" / "kind.yaml"))
    assert "warning" not in quiet.stderr


@pytest.mark.parametrize("content", [b"\x00\xff garbage: [", b"apiVersion: v1\nclusters: 7\n"])
def test_invalid_kubeconfig_exits_2_in_one_line(tmp_path, content):
    path = tmp_path / "kubeconfig"
    path.write_bytes(content)
    proc = jobs_cli("status", "digits", "--kubeconfig", str(path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load the Kubernetes config from" in lines[0]
