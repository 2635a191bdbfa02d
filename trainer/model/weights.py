"""Initial weights: where a run's starting weights come from, resolved once before training.

``weights:`` is ``none`` (train from scratch), ``imagenet`` (a keras.applications backbone's
ImageNet weights) or a file: a local path or ``gs://bucket/path`` to a ``.weights.h5`` (or
Keras ``.h5``) for the backbone (for seed_cnn / resnet_small: for the whole model), e.g. the
``model/backbone.weights.h5`` an earlier run exported.

``imagenet`` is looked up, in order, and never downloaded when found:

1. Keras' cache, ``$KERAS_HOME/models/<file>`` (default ``~/.keras``), where the GPU image bakes
   the weights at build time (docker/Dockerfile, build arg ``BACKBONES``);
2. ``weights_mirror``: a directory or ``gs://`` prefix holding the same file names;
3. Keras' download URL, unless ``KUBETRAIN_NO_DOWNLOAD=1``. A download is copied to a
   ``gs://`` mirror when one is configured, so the next pod finds it there.

Nothing found (a pod with no egress, nothing baked, no mirror) is exit code 2 with one line
saying what to provide. The file used, where it came from and its SHA-256 go into the
config (``auto_reasons.weights_source``) and the report (``initial_weights`` in metrics.json).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.config import BACKBONES, TrainConfig
from trainer.core.digest import file_sha256
from trainer.core.errors import ConfigError
from trainer.model.backbones import BACKBONES as SPECS
from trainer.storage import small_files
from trainer.storage.uri import is_remote

log = logging.getLogger(__name__)

NO_DOWNLOAD_ENV = "KUBETRAIN_NO_DOWNLOAD"


@dataclass(frozen=True)
class InitialWeights:
    kind: str  # "none", "imagenet" or "file"
    source: str = ""  # where the file was found: a path or URI, with how (cache, mirror, download)
    path: str | None = None  # the local file to load
    sha256: str | None = None

    def describe(self, model: str) -> str:
        if self.kind == "none":
            return f"{model} trained from scratch"
        what = "ImageNet weights" if self.kind == "imagenet" else "weights"
        return f"{model} fine-tuned from {what} {self.source} (sha256 {(self.sha256 or '')[:16]})"

    def to_dict(self) -> dict:
        return asdict(self)


def keras_cache_dirs() -> list[Path]:
    """Where Keras keeps downloaded files: $KERAS_HOME (or ~/.keras), then its /tmp fallback."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "models", Path("/tmp/.keras/models")]


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


def _found(kind: str, source: str, path: Path) -> InitialWeights:
    w = InitialWeights(kind, source, str(path), file_sha256(path))
    log.info("initial weights: %s (sha256 %s)", source, w.sha256)
    return w


def _imagenet(cfg: TrainConfig, scratch: Path) -> InitialWeights:
    spec = SPECS[cfg.model]
    fname = spec.imagenet_file
    for cache in keras_cache_dirs():
        if (cache / fname).is_file():
            return _found("imagenet", f"{cache / fname} (Keras cache)", cache / fname)
    mirror = cfg.weights_mirror
    if mirror:
        uri = _join(mirror, fname)
        got = small_files.local_copy(uri, scratch / "weights")
        if got:
            return _found("imagenet", f"{uri} (weights_mirror)", got)
    tried = f"not in Keras' cache ({keras_cache_dirs()[0] / fname})" + (f" nor at {_join(mirror, fname)}" if mirror else "")
    advice = (f"bake it into the image (docker build --build-arg BACKBONES={cfg.model}), set weights_mirror "
              f"to a directory or gs:// prefix holding {fname}, or pass weights: <file or gs:// URI>")
    if os.environ.get(NO_DOWNLOAD_ENV) == "1":
        raise ConfigError(f"ImageNet weights for {cfg.model}: {tried}, and {NO_DOWNLOAD_ENV}=1; {advice}")
    import keras

    log.info("downloading ImageNet weights for %s from %s", cfg.model, spec.imagenet_url)
    try:
        path = Path(keras.utils.get_file(fname, spec.imagenet_url, cache_subdir="models"))
    except Exception as exc:  # noqa: BLE001 (urllib, OSError, ...: no egress or no such file)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"ImageNet weights for {cfg.model}: {tried}, and the download failed ({first}); "
                          f"{advice}") from None
    if is_remote(mirror):
        try:
            small_files.write_file(_join(mirror, fname), path)
            log.info("copied %s to %s for the next runs", fname, mirror)
        except Exception as exc:  # noqa: BLE001 (the run goes on; the next one downloads again)
            log.warning("could not copy %s to %s: %s", fname, mirror, exc)
    return _found("imagenet", f"{spec.imagenet_url} (downloaded)", path)


def resolve(cfg: TrainConfig, scratch: Path) -> InitialWeights:
    """The run's initial weights as a local file (see the module docstring). ConfigError if none."""
    if cfg.weights in ("none", "auto") and not (cfg.weights == "auto" and cfg.model in BACKBONES):
        return InitialWeights("none")
    if cfg.weights in ("imagenet", "auto"):
        return _imagenet(cfg, scratch)
    got = small_files.local_copy(cfg.weights, scratch / "weights")
    if got is None:
        raise ConfigError(f"weights file {cfg.weights} not found")
    return _found("file", cfg.weights, got)
