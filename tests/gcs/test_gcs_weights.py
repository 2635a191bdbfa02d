"""Initial weights from a bucket (trainer/model/weights.py) against the GCS emulator: a backbone's
weights file given as ``weights: gs://...``, and ImageNet weights found in a ``gs://``
``weights_mirror`` (stood in for by a file the test writes; nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.core.errors import ConfigError

pytestmark = [pytest.mark.gcs]


def test_backbone_weights_from_a_bucket_give_the_same_features(gcs_client, bucket, tmp_path):
    from trainer.model.backbones import save_backbone_weights
    from trainer.model.build import build_model
    from trainer.model.schedule import find_backbone
    from trainer.model.weights import resolve

    source = build_model("mobilenetv3small", 32, 3)
    local = tmp_path / "mnv3.weights.h5"
    save_backbone_weights(source, local)
    gcs_client.bucket(bucket).blob("weights/mnv3.weights.h5").upload_from_filename(str(local))

    cfg = load_config({"data": "/d", "output": "/o", "model": "mobilenetv3small",
                       "weights": f"gs://{bucket}/weights/mnv3.weights.h5"})
    w = resolve(cfg, tmp_path / "scratch")
    assert w.kind == "file" and w.source == cfg.weights and w.path.startswith(str(tmp_path / "scratch"))
    loaded = build_model("mobilenetv3small", 32, 3, w.path)
    images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(find_backbone(loaded)(images)),
                               np.asarray(find_backbone(source)(images)), rtol=1e-5, atol=1e-6)

    missing = load_config({"data": "/d", "output": "/o", "model": "mobilenetv3small",
                           "weights": f"gs://{bucket}/weights/nope.weights.h5"})
    with pytest.raises(ConfigError, match=r"weights file gs://.*nope.weights.h5 not found"):
        resolve(missing, tmp_path / "scratch")


def test_imagenet_weights_from_a_gs_mirror_after_the_keras_cache(gcs_client, bucket, tmp_path, monkeypatch):
    from trainer.model.backbones import BACKBONES
    from trainer.model.weights import resolve

    fname = BACKBONES["resnet50"].imagenet_file
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # empty: nothing baked
    monkeypatch.setenv("KUBETRAIN_NO_DOWNLOAD", "1")
    gcs_client.bucket(bucket).blob(f"mirror/{fname}").upload_from_string(b"mirrored imagenet weights")
    cfg = load_config({"data": "/d", "output": "/o", "model": "resnet50", "weights_mirror": f"gs://{bucket}/mirror"})
    w = resolve(cfg, tmp_path / "scratch")
    assert w.kind == "imagenet" and w.source == f"gs://{bucket}/mirror/{fname} (weights_mirror)"
    assert Path(w.path).read_bytes() == b"mirrored imagenet weights"
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / fname).write_bytes(b"baked")
    assert "(Keras cache)" in resolve(cfg, tmp_path / "scratch").source  # the cache comes first
