"""Images/s of each keras.applications backbone on this machine: head phase vs full fine-tune.

Why: choosing a backbone (and ``fine_tune_layers``) is a speed/accuracy trade; this measures the
speed half on the machine at hand. Per backbone, at its default size, the model comes from the
product's own builder (``trainer.model.build.build_model``, weights none) and the phase's trainable
layers from ``trainer.model.schedule.set_trainable`` (``head``: backbone frozen; ``fine_tune``: every
backbone layer with weights, batch norm frozen, exactly as a run does). The step is a plain
``tf.function`` (forward, sparse cross-entropy, Adam on the trainable variables) fed a fixed
synthetic uint8 batch from memory, so input pipeline and disk cost nothing. Warm-up steps
(tracing, first allocations) are skipped; the next ``--steps`` are timed.

    python -m bench.backbones [--steps 4] [--warmup 2] [--batch 16] [--only a,b]

Writes bench/results/backbones-<UTC>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(name: str, size: int, phase_name: str, steps: int, warmup: int, batch: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.model.build import build_model
    from trainer.model.schedule import Phase, set_trainable, trainable_summary

    keras.backend.clear_session()
    model = build_model(name, size, 10)
    set_trainable(model, Phase(phase_name, 0, 1, 1e-3, 0 if phase_name == "head" else None))
    trainable, total = trainable_summary(model)
    variables = model.trainable_variables
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    y = tf.constant(rng.integers(0, 10, (batch,)), tf.int32)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(tf.cast(x, tf.float32), training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        step(x, y).numpy()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, y).numpy()
        times.append(time.perf_counter() - t)
    seconds = sum(times)
    return {"backbone": name, "image_size": size, "phase": phase_name, "batch": batch,
            "trainable_params": trainable, "total_params": total, "warmup_steps": warmup,
            "warmup_s": round(warm_s, 2), "steps": steps, "step_s": [round(t, 3) for t in times],
            "images_per_s": round(batch * steps / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    from trainer.model.backbones import BACKBONES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per backbone and phase")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", default="", help="comma-separated backbone names (default: all)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BACKBONES)
    load = os.getloadavg()
    rows = []
    for name in names:
        size = BACKBONES[name].default_size
        for phase in ("head", "fine_tune"):
            row = measure(name, size, phase, args.steps, args.warmup, args.batch)
            rows.append(row)
            print(f"{name:18s} {size:4d}px {phase:10s} {row['images_per_s']:8.2f} img/s "
                  f"(trainable {row['trainable_params']:,} of {row['total_params']:,})", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = {"when_utc": stamp, "cpu_count": os.cpu_count(), "loadavg_start": [round(v, 2) for v in load],
           "loadavg_end": [round(v, 2) for v in os.getloadavg()], "args": vars(args), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"backbones-{stamp}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
