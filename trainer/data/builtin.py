"""Built-in datasets: ``builtin:digits`` is scikit-learn's 8x8 handwritten digits (real data
that ships with a dependency: no download), as arrays or written out as class folders of PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.core.errors import DataError


def digits_arrays() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """scikit-learn's digits as uint8 [N, 8, 8] (0..255), labels and class names.

    Read straight from the CSV file scikit-learn ships (what ``load_digits`` parses): importing
    ``sklearn.datasets`` costs ~1 s of start-up, the file ~0.05 s.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
        flat, target = data[:, :-1], data[:, -1].astype(np.int32)
        raw, names = flat.reshape(-1, 8, 8), tuple(str(c) for c in range(10))
    else:  # another scikit-learn layout: its loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        raw, target = bunch.images, bunch.target.astype(np.int32)
        names = tuple(str(c) for c in bunch.target_names)
    images = np.round(raw * (255.0 / 16.0)).astype(np.uint8)
    return images, target, names


def resize_gray(images: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] uint8 grayscale -> [N, size, size, 3] uint8 (bilinear, channels repeated)."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        resized = np.asarray(Image.fromarray(img, mode="L").resize((size, size), Image.BILINEAR))
        out[i] = resized[:, :, None]
    return out


def export_builtin(name: str, dest: Path) -> int:
    """Write a built-in dataset as PNG files in class folders under ``dest``; returns the count."""
    from PIL import Image

    if name != "digits":
        raise DataError(f"unknown built-in dataset {name!r}; available: digits")
    images, labels, class_names = digits_arrays()
    for cls in class_names:
        (dest / cls).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img, mode="L").save(dest / class_names[label] / f"{i:05d}.png")
    return len(images)
