"""Files read from outside are checked before use (#22): a packed dataset's manifest.json
whose counts or class list were edited (the fingerprint covers the shards, not the counts),
or that is nested too deeply, is exit 3 in one line naming the file and the key, before
training; a `tensorboard` path in the run directory that is a file is exit 2 in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.core.errors import DataError
from trainer.data.packed import Manifest

REPO = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "1", "--set", "model=seed_cnn", "--set", "image_size=16"]


def trainer(*args: str, scratch: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    proc = trainer("data", "pack", "builtin:digits", str(root / "digits"), "--shard-size-mb", "0.05",
                   scratch=root / "s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "digits"


def edited(packed: Path, change) -> str:
    manifest = json.loads((packed / "manifest.json").read_text())
    change(manifest)
    return json.dumps(manifest)


@pytest.mark.parametrize("change, message", [
    pytest.param(lambda m: m["splits"]["train"].__setitem__("images", m["splits"]["train"]["images"] + 7),
                 "key 'splits.train.images': the counts disagree", id="split-count"),
    pytest.param(lambda m: m["splits"]["test"]["per_class"].__setitem__("3", 10**6),
                 "key 'splits.test.images': the counts disagree", id="class-count"),
    pytest.param(lambda m: m["class_names"].__setitem__(0, "zero"),
                 "key 'splits.train.per_class' names '0', which is not in 'class_names'", id="class-renamed"),
    pytest.param(lambda m: m["class_names"].__setitem__(1, "0"), "must be distinct", id="class-twice"),
    pytest.param(lambda m: m["splits"]["val"]["per_class"].__setitem__("1", "15"), "not a count",
                 id="count-a-string"),
])
def test_an_edited_manifest_is_refused_naming_the_key(packed, change, message):
    with pytest.raises(DataError, match=message):
        Manifest.from_json(edited(packed, change), "digits/manifest.json")


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, '{"format": ' * 3000 + "1" + "}" * 3000, "[1, 2]",
                                  '"manifest"'])
def test_a_foreign_or_deep_manifest_is_one_line(text):
    with pytest.raises(DataError) as caught:
        Manifest.from_json(text, "digits/manifest.json")
    assert "digits/manifest.json" in str(caught.value) and len(str(caught.value)) < 400


def test_training_on_an_edited_manifest_stops_before_training(packed, tmp_path):
    copy = tmp_path / "digits"
    copy.mkdir()
    for p in packed.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(packed)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(packed)).write_bytes(p.read_bytes())
    (copy / "manifest.json").write_text(edited(packed, lambda m: m["splits"]["train"].__setitem__("images", 5)))
    proc = trainer("--data", str(copy), "--output", str(tmp_path / "run"), *FAST, scratch=tmp_path / "s")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Graph execution error" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("data error:") and "manifest.json: key 'splits.train.images'" in last, last


def test_a_tensorboard_path_that_is_a_file_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("not a directory")
    proc = trainer("--data", "builtin:digits", "--output", str(run), *FAST, scratch=tmp_path / "s")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: cannot write TensorBoard events to") and "tensorboard" in last
