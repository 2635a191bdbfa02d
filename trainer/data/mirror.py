"""Do mirrored images keep their class? A quick probe on a sample of the training images.

``augment.flip: auto`` turns horizontal flips on when they would teach the model something true
about the data: a cat mirrored is a cat, a mirrored "3" or "b" is another shape or class. The
probe measures it, deterministically, in well under a second with numpy alone:

1. an even sample of up to ``SAMPLE`` labelled images (every class), resized to 16x16 RGB;
2. fixed random 5x5 filters at stride 2 (ReLU of both signs) pooled over the 4 image quadrants: features
   that see textures and, through the quadrants and oriented filters, left from right;
3. a ridge classifier fitted on two thirds of the sample, scored on the other third as it is
   (``accuracy``) and mirrored left-right (``flipped_accuracy``).

If mirrored images keep their class, the classifier recognises them about as well as the
originals; if not (digits: ~25% of the accuracy above chance kept; glyphs whose classes are each
other's mirror images: below chance), it does not. ``trainer.config.auto.flip_rule`` turns the
numbers into the choice and its reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.config.auto import MirrorProbe

SAMPLE = 600  # labelled images the probe reads (an even sample over the files)
SIZE = 16  # px: the probe's image size
FILTERS = 32  # random 5x5x3 filters (x2 signs)
KERNEL = 5
STRIDE = 2  # filter positions 2 px apart: 6x6 of them
RIDGE = 1.0  # L2 penalty per example
SEED = 0


def _features(x: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] float -> [N, 4 quadrants x 2 x FILTERS] pooled random-filter responses."""
    rng = np.random.default_rng(SEED)
    n, _, _, channels = x.shape
    x = (x - x.mean((1, 2, 3), keepdims=True)) / (x.std((1, 2, 3), keepdims=True) + 1e-3)
    filters = rng.normal(size=(KERNEL * KERNEL * channels, FILTERS)).astype(np.float32)
    filters -= filters.mean(0)
    filters /= np.linalg.norm(filters, axis=0)
    patches = np.lib.stride_tricks.sliding_window_view(x, (KERNEL, KERNEL), axis=(1, 2))[:, ::STRIDE, ::STRIDE]
    out = patches.shape[1]
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n, out, out, -1)
    r = patches @ filters
    f = np.concatenate([np.maximum(r - 0.5, 0), np.maximum(-r - 0.5, 0)], -1)
    half = out // 2
    return f[:, :2 * half, :2 * half].reshape(n, 2, half, 2, half, -1).mean((2, 4)).reshape(n, -1)


def probe(images: np.ndarray, labels: np.ndarray) -> MirrorProbe | None:
    """The probe on ``images`` [N, SIZE, SIZE, 3] uint8 and their int labels; None below 30 images
    or with one class."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(images) < 30 or len(classes) < 2:
        return None
    y = np.searchsorted(classes, labels)
    order = np.random.default_rng(SEED).permutation(len(images))
    x, y = images[order].astype(np.float32), y[order]
    fit = len(x) * 2 // 3
    feats, mirrored = _features(x), _features(x[:, :, ::-1])
    mean, std = feats[:fit].mean(0), feats[:fit].std(0) + 1e-6
    a = (feats[:fit] - mean) / std
    onehot = np.eye(len(classes))[y[:fit]]
    w = np.linalg.solve(a.T @ a + RIDGE * fit * np.eye(a.shape[1]), a.T @ onehot)

    def accuracy(f: np.ndarray) -> float:
        return float((((f[fit:] - mean) / std @ w).argmax(1) == y[fit:]).mean())

    chance = float(np.bincount(y[fit:]).max() / (len(y) - fit))
    gray = bool(np.all(images[..., 0] == images[..., 1]) and np.all(images[..., 1] == images[..., 2]))
    return MirrorProbe(accuracy(feats), accuracy(mirrored), chance, len(x), gray)


def _resized(img, size: int = SIZE) -> np.ndarray:
    from PIL import Image

    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    else:
        img.draft("RGB", (size * 2, size * 2))  # a JPEG decodes at 1/2-1/8 scale: 600 large photos in ~1 s
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)


def probe_arrays(images: np.ndarray, labels: np.ndarray, sample: int = SAMPLE) -> MirrorProbe | None:
    """The probe on in-memory uint8 images ([N, H, W] or [N, H, W, 3]), an even sample of them."""
    step = max(1, len(images) // sample)
    picked = images[::step][:sample]
    return probe(np.stack([_resized(img) for img in picked]), np.asarray(labels)[::step][:sample])


def probe_files(files: list[Path], labels: list[int], sample: int = SAMPLE) -> MirrorProbe | None:
    """The probe on image files (unreadable ones skipped), an even sample of them."""
    from PIL import Image, UnidentifiedImageError

    step = max(1, len(files) // sample)
    images, kept = [], []
    for path, label in list(zip(files, labels))[::step][:sample]:
        try:
            with Image.open(path) as img:
                images.append(_resized(img))
            kept.append(label)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            continue  # the decoding pass counts and reports unreadable files
    return probe(np.stack(images), np.array(kept)) if images else None
