"""The config: layering, unknown keys, bad values, per-dataset defaults, and the CLI's exit codes."""

from __future__ import annotations

import pytest

from trainer.config import load_config, parse_overrides, read_yaml
from trainer.core.errors import EXIT_CONFIG, EXIT_DATA, ConfigError

from .conftest import run_trainer

BASE = {"data": "builtin:digits", "output": "/tmp/out"}


def test_defaults_resolve_per_dataset():
    digits = load_config(BASE)
    assert digits.image_size == 16
    assert digits.augment.flip == "none" and digits.augment.rotation == 0.0
    assert "image_size" in digits.auto_reasons and "augment.flip" in digits.auto_reasons
    folder = load_config({"data": "/data/flowers", "output": "/tmp/o"})
    assert folder.image_size == 0 and folder.augment.flip is None  # resolved after the data scan
    assert folder.weights == "none" and folder.lr_schedule == "warmup_cosine"


def test_layers_file_then_overrides():
    cfg = load_config({**BASE, "epochs": 3, "augment": {"zoom": 0.2}},
                      parse_overrides(["epochs=5", "augment.flip=vertical"]))
    assert cfg.epochs == 5
    assert cfg.augment.zoom == 0.2 and cfg.augment.flip == "vertical"


def test_config_is_frozen():
    cfg = load_config(BASE)
    with pytest.raises(AttributeError):
        cfg.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "values, message",
    [
        pytest.param({"epoch": 3}, "unknown config key 'epoch'; did you mean 'epochs'?", id="unknown-key"),
        pytest.param({"augment": {"flipp": "none"}}, "unknown config key 'augment.flipp'", id="unknown-nested"),
        pytest.param({"model": "vgg"}, "'vgg' is not one of: seed_cnn, resnet_small, efficientnetv2b0", id="bad-choice"),
        pytest.param({"epochs": "many"}, "config key 'epochs': expected int", id="bad-type"),
        pytest.param({"epochs": 0}, "'epochs': must be >= 1", id="zero-epochs"),
        pytest.param({"learning_rate": -1}, "'learning_rate': must be > 0", id="negative-lr"),
        pytest.param({"data": "builtin:cifar"}, "available: builtin:digits", id="unknown-builtin"),
        pytest.param({"output": "gs://"}, "has no bucket name", id="gs-no-bucket"),
        pytest.param({"augment": "yes"}, "must be a mapping", id="section-not-mapping"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        load_config({**BASE, **values})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_valid_choices():
    with pytest.raises(ConfigError, match="valid keys: data, output, model"):
        load_config({**BASE, "colour": "red"})


def test_read_yaml_rejects_non_mapping_and_bad_yaml():
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml("- a\n- b\n", "c.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml("a: [1, 2\n", "c.yaml")


@pytest.mark.parametrize(
    "args, code, message",
    [
        pytest.param(["--data", "builtin:digits", "--output", "{out}", "--bogus"], EXIT_CONFIG,
                     "unrecognized arguments", id="unknown-flag"),
        pytest.param(["--data", "builtin:digits", "--output", "{out}", "--set", "epoch=2"], EXIT_CONFIG,
                     "configuration error: unknown config key 'epoch'", id="unknown-key"),
        pytest.param(["--output", "{out}"], EXIT_CONFIG, "no dataset", id="no-data"),
        pytest.param(["--data", "{tmp}/missing", "--output", "{out}"], EXIT_DATA,
                     "data error: dataset directory", id="missing-dir"),
        pytest.param(["--data", "builtin:digits", "--output", "{out}", "--config", "{tmp}/nope.yaml"],
                     EXIT_CONFIG, "config file", id="missing-config-file"),
    ],
)
def test_cli_errors_exit_with_documented_codes(tmp_path, args, code, message):
    args = [a.format(out=tmp_path / "out", tmp=tmp_path) for a in args]
    proc = run_trainer(args, tmp_path, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_key(tmp_path):
    proc = run_trainer(["--help"], tmp_path, timeout=60)
    assert proc.returncode == 0
    for key in ("augment.flip", "steps_per_execution", "cpu_replicas", "exit codes"):
        assert key in proc.stdout


def test_print_config_writes_resolved_yaml(tmp_path):
    proc = run_trainer(["--data", "builtin:digits", "--output", str(tmp_path), "--epochs", "4",
                        "--print-config"], tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 4" in proc.stdout and "image_size: 16" in proc.stdout
