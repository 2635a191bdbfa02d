"""``python -m bench.precision [--rounds N]``: bf16 against float32 on this CPU, and what ``auto`` picks.

Prints (Markdown, and one JSON line) the CPU's bf16 flags, a 4096x4096 matmul's GFLOP/s in
float32 and bfloat16, the seed CNN's training images/s at 64x64x3 (batch 64) in float32 and
mixed_bfloat16 (alternating rounds, best round each: other work slows rounds, not the best),
and the precision ``precision: auto`` chooses here with its reason (trainer/precision.py; a
calibration it runs is not cached by this command). ~1-2 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform

from trainer.runtime import precision


def measure(rounds: int) -> dict:
    machine = precision.observe()
    bf16_flags = sorted(f for f in machine.cpu_flags if "bf16" in f or f.startswith("amx"))
    gflops = {dtype: precision.matmul_gflops(dtype, n=4096, repeats=rounds) for dtype in ("float32", "bfloat16")}
    rates = precision.training_rates(rounds=rounds, steps=8, image_size=64, batch=64)
    choice = precision.decide(machine)
    if choice.calibrate:
        choice = precision.decide(machine, calibration=precision.measure_bf16_ratio())
    return {"cpu_model": machine.cpu_model, "arch": platform.machine(), "bf16_flags": bf16_flags,
            "matmul_gflops": gflops, "seed_cnn_images_per_second": rates,
            "auto": {"precision": choice.precision, "reason": choice.reason}}


def table(r: dict) -> str:
    g, s = r["matmul_gflops"], r["seed_cnn_images_per_second"]
    rows = [
        "| measurement | float32 | bf16 | bf16 / float32 |",
        "|---|---|---|---|",
        f"| 4096x4096 matmul, GFLOP/s | {g['float32']:.0f} | {g['bfloat16']:.0f} | {g['bfloat16'] / g['float32']:.2f}x |",
        (f"| seed CNN training, 64x64x3, batch 64, images/s | {s['float32']:.0f} | {s['mixed_bfloat16']:.0f} |"
        f" {s['mixed_bfloat16'] / s['float32']:.2f}x |"),
    ]
    flags = ", ".join(r["bf16_flags"]) or "none"
    return (f"CPU: {r['cpu_model']} ({r['arch']}), bf16 flags: {flags}\n\n" + "\n".join(rows)
            + f"\n\n`precision: auto` here: {r['auto']['precision']} ({r['auto']['reason']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement (default 5)")
    args = parser.parse_args(argv)
    result = measure(args.rounds)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
