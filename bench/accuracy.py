"""``python -m bench.accuracy``: the trainer's new data-fitting defaults vs the old ones (issue 13).

Two generated datasets, written as PNG files in class folders (no download), each trained by
``python -m trainer`` in its own process with the same epoch budget, twice per seed:

* **old**: the defaults before issue 13, spelled out: ``image_size=64``, horizontal flips,
  rotation 0.05, shift 0.1, zoom 0.1, a constant learning rate, the last epoch exported;
* **new**: nothing set: everything ``auto`` (trainer/config/auto.py), recorded in the run's
  ``auto_reasons``.

Datasets (built here, not tuned to any number):

* ``glyphs``: 28x28 grayscale, 10 classes of stroke glyphs; classes 5-9 are the mirror images
  of classes 0-4 (like b/d, p/q), every sample jittered (rotation, shift, scale, thickness, noise);
* ``photos``: colour images of varied size (56-120 px), 2 classes of textured blobs (stripes vs
  spots, overlapping colours) on cluttered backgrounds, at random positions and scales.

Writes ``bench/results/accuracy-<UTC time>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

OLD_DEFAULTS = ["--set", "image_size=64", "--set", "augment.flip=horizontal", "--set", "augment.rotation=0.05",
                "--set", "augment.shift=0.1", "--set", "augment.zoom=0.1", "--set", "lr_schedule=constant",
                "--set", "export_epoch=last"]


# ---------------------------------------------------------------------------------------------
# Generated datasets


def _glyph_prototypes(rng, n: int) -> list[list[tuple[float, float, float, float]]]:
    """``n`` asymmetric stroke glyphs (3 strokes each, unit square coordinates)."""
    protos = []
    for _ in range(n):
        strokes = []
        for _ in range(3):
            x0, y0, x1, y1 = rng.uniform(0.15, 0.85, 4)
            strokes.append((x0, y0, x1, y1))
        protos.append(strokes)
    return protos


def _draw_glyph(strokes, rng, size: int = 28) -> np.ndarray:
    from PIL import Image, ImageDraw

    big = 4 * size
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    angle = rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.8, 1.1)
    dx, dy = rng.uniform(-0.08, 0.08, 2)
    c, s = np.cos(angle), np.sin(angle)
    width = int(rng.integers(6, 12))

    def tf(x, y):
        x, y = (x - 0.5) * scale, (y - 0.5) * scale
        return ((c * x - s * y + 0.5 + dx) * big, (s * x + c * y + 0.5 + dy) * big)

    for x0, y0, x1, y1 in strokes:
        x0 += rng.normal(0, 0.03)
        y1 += rng.normal(0, 0.03)
        draw.line([tf(x0, y0), tf(x1, y1)], fill=255, width=width)
    small = np.asarray(img.resize((size, size), Image.BILINEAR), np.float32)
    small = small + rng.normal(0, 12, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def make_glyphs(root: Path, per_class: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = _glyph_prototypes(rng, 5)
    mirrored = [[(1 - x0, y0, 1 - x1, y1) for x0, y0, x1, y1 in p] for p in base]
    for cls, strokes in enumerate(base + mirrored):
        d = root / f"glyph{cls}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_draw_glyph(strokes, rng), mode="L").save(d / f"{i:05d}.png")


def _photo(cls: int, rng) -> np.ndarray:
    size = int(rng.integers(56, 121))
    h, w = size, int(size * rng.uniform(1.0, 1.4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # cluttered background: low-frequency colour noise plus a few random rectangles
    bg = rng.uniform(40, 200, 3)
    img = np.ones((h, w, 3), np.float32) * bg
    for _ in range(4):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    # the object: an ellipse whose texture is the class (stripes vs spots), colours overlap
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    theta = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / rx
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ry
    inside = (u ** 2 + v ** 2) <= 1
    period = rng.uniform(0.35, 0.6)
    if cls == 0:
        tex = np.sin(u / period * np.pi * 2) > 0
    else:
        tex = (np.sin(u / period * np.pi * 2) * np.sin(v / period * np.pi * 2)) > 0.3
    base = rng.uniform(60, 200, 3)
    accent = np.clip(base + rng.uniform(-90, 90, 3), 0, 255)
    obj = np.where(tex[..., None], accent, base)
    img = np.where(inside[..., None], obj, img)
    img += rng.normal(0, 14, img.shape) + rng.uniform(-30, 30)  # sensor noise, exposure
    return np.clip(img, 0, 255).astype(np.uint8)


def make_photos(root: Path, per_class: int, seed: int = 1) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, name in enumerate(("striped", "spotted")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_photo(cls, rng)).save(d / f"{i:05d}.png")


# ---------------------------------------------------------------------------------------------
# Runs


def run_one(data: Path, out: Path, epochs: int, seed: int, extra: list[str], scratch: Path) -> dict:
    env = {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "trainer", "--data", str(data), "--output", str(out), "--epochs", str(epochs),
           "--set", f"seed={seed}", "--set", "export=false", "-q", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    m = json.loads((out / "report" / "metrics.json").read_text())
    return {"test_accuracy": m["test_accuracy"], "val_accuracy": m["history"]["val_accuracy"],
            "train_seconds": m["train_seconds"], "wall_seconds": wall,
            "images_per_second": m["images_per_second"], "selected_epoch": m.get("selected_epoch"),
            "auto_reasons": m.get("auto_reasons", {}), "image_size": m.get("image_size")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2, help="runs per variant (different seeds)")
    p.add_argument("--glyphs-per-class", type=int, default=300)
    p.add_argument("--photos-per-class", type=int, default=200)
    p.add_argument("--glyph-epochs", type=int, default=5)
    p.add_argument("--photo-epochs", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="tiny datasets, 2 epochs, 1 seed (checks the harness)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.glyphs_per_class, args.photos_per_class = 1, 30, 30
        args.glyph_epochs = args.photo_epochs = 2

    work = Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    make_glyphs(work / "glyphs", args.glyphs_per_class)
    make_photos(work / "photos", args.photos_per_class)
    datasets = {"glyphs": args.glyph_epochs, "photos": args.photo_epochs}
    results: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()},
                     "args": vars(args), "runs": []}
    for name, epochs in datasets.items():
        for seed in range(args.seeds):
            order = ("old", "new") if seed % 2 == 0 else ("new", "old")  # alternate who goes first
            for variant in order:
                extra = OLD_DEFAULTS if variant == "old" else []
                out = work / "runs" / f"{name}-{variant}-{seed}"
                r = run_one(work / name, out, epochs, 1337 + seed, extra, work / "scratch")
                cfg_text = (out / "config.yaml").read_text()
                r.update(dataset=name, variant=variant, seed=seed, epochs=epochs,
                         image_size=next(int(line.split()[1]) for line in cfg_text.splitlines()
                                         if line.startswith("image_size:")))
                results["runs"].append(r)
                print(f"{name:7s} {variant:4s} seed {seed}: test accuracy {r['test_accuracy']:.4f} "
                      f"({r['image_size']} px, {r['train_seconds']:.0f} s training)", flush=True)

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = out_dir / f"accuracy-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {path.relative_to(ROOT)}\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    rows = ["| dataset | epochs | variant | image size | test accuracy (per seed) | median | training s (median) |",
            "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["dataset"] for r in results["runs"]):
        for variant in ("old", "new"):
            rs = [r for r in results["runs"] if r["dataset"] == name and r["variant"] == variant]
            accs = [r["test_accuracy"] for r in rs]
            rows.append(f"| {name} | {rs[0]['epochs']} | {variant} | {rs[0]['image_size']} | "
                        f"{', '.join(f'{a:.3f}' for a in accs)} | **{statistics.median(accs):.3f}** | "
                        f"{statistics.median(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
