"""What a dataset is, in one string: ``sha256:<hex>`` over its class names and every image a run
uses (its key, its label and its bytes), independent of where it is stored or when it was
downloaded. Two nights with the same fingerprint train on the same images with the same labels
(``skip_unchanged``, ``trainer.promote.nothing_new``). A packed dataset has its own fingerprint
(its manifest's, over its shards); the built-in digits hash their pixels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from trainer.core.digest import file_sha256


def _start(kind: str, class_names: Iterable[str]) -> hashlib._Hash:
    digest = hashlib.sha256(f"kubetrain dataset v1 {kind}\n".encode())
    for name in class_names:
        digest.update(f"class {name}\n".encode())
    return digest


def of_files(class_names: Iterable[str], files: Iterable[tuple[str, int, Path]]) -> str:
    """The fingerprint of image files given as (key, label, path); read once more, in key order."""
    digest = _start("files", class_names)
    for key, label, path in sorted(files):
        content = file_sha256(Path(path))
        digest.update(f"{key}\t{label}\t{content}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def of_arrays(name: str, class_names: Iterable[str], images: np.ndarray, labels: np.ndarray) -> str:
    digest = _start(f"arrays {name}", class_names)
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return f"sha256:{digest.hexdigest()}"


def of_packed(manifest_fingerprint: str) -> str:
    return f"packed:{manifest_fingerprint}"
