"""``python -m bench.multiworker [--rounds N] [--epochs E] [--model M]``: 2 workers vs 1.

Three ways to train the same model on the same global batch (128 on builtin:digits, 16x16):

  one        1 process, the default strategy, batch 128 (1 replica)
  mirrored2  1 process, MirroredStrategy over 2 logical CPU devices, batch 64 per replica
  mwms2      2 processes on 127.0.0.1 (TF_CONFIG), MultiWorkerMirroredStrategy, batch 64 each

``mwms2`` vs ``one`` is "2 workers vs 1" on this machine; ``mwms2`` vs ``mirrored2`` is the cost
of MultiWorkerMirroredStrategy over MirroredStrategy at the same replica count (2). Every run is
``python -m trainer`` in fresh processes; the variants alternate within a round and the order is
reversed every other round. From each run's ``metrics.json``: training images/s and seconds per
epoch (median over the epochs after the first, which traces), seconds per epoch all in
(training + validation + checkpoint: ``train_seconds / epochs``), and the processes' wall time.
Writes ``bench/results/multiworker-<UTC date-time>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("one", "mirrored2", "mwms2")


def _run(variant: str, out: Path, args: argparse.Namespace) -> dict:
    common = [sys.executable, "-m", "trainer", "--data", "builtin:digits", "--output", str(out),
              "--epochs", str(args.epochs), "--set", f"model={args.model}", "--set", "export=false",
              "--set", f"steps_per_execution={args.steps_per_execution}", "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KUBETRAIN_SCRATCH": str(out.parent / f"scratch-{variant}")}
    if variant == "one":
        commands = [(common + ["--batch-size", "128"], env)]
    elif variant == "mirrored2":
        commands = [(common + ["--batch-size", "64", "--cpu-replicas", "2"], env)]
    else:
        from trainer.runtime.workers import on_this_machine

        commands = [(common + ["--batch-size", "64"], {**env, "TF_CONFIG": worker.tf_config()})
                    for worker in on_this_machine(2)]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for cmd, e in commands]
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    wall = time.monotonic() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"{variant} failed: {[p.returncode for p in procs]}\n{errors[0][-2000:]}")
    m = json.loads((out / "report" / "metrics.json").read_text())
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    return {
        "variant": variant,
        "workers": m["workers"],
        "replicas": m["replicas"],
        "global_batch": m["global_batch_size"],
        "images_per_second": statistics.median(m["history"]["images_per_second"][steady]),
        "epoch_seconds": statistics.median(m["history"]["epoch_seconds"][steady]),
        "epoch_seconds_all_in": m["train_seconds"] / args.epochs,
        "wall_seconds": wall,
        "test_accuracy": m["test_accuracy"],
        "load_before": os.getloadavg()[0],
    }


def table(runs: list[dict]) -> str:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    med = {v: {k: statistics.median(r[k] for r in rs) for k in
               ("images_per_second", "epoch_seconds", "epoch_seconds_all_in", "wall_seconds", "test_accuracy")}
           for v, rs in by.items() if rs}
    rows = [("| variant | workers x replicas | train img/s | s/epoch (train) | s/epoch (all in) "
             "| process wall s | test acc | vs `one` (img/s) | vs `mirrored2` (img/s) |"),
            "|---|---|---|---|---|---|---|---|---|"]
    for v, m in med.items():
        r = by[v][0]
        rows.append(f"| {v} | {r['workers']} x {r['replicas'] // r['workers']} | {m['images_per_second']:.0f} "
                    f"| {m['epoch_seconds']:.2f} | {m['epoch_seconds_all_in']:.2f} | {m['wall_seconds']:.0f} "
                    f"| {m['test_accuracy']:.3f} | {m['images_per_second'] / med['one']['images_per_second']:.2f} "
                    f"| {m['images_per_second'] / med['mirrored2']['images_per_second']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multiworker", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--steps-per-execution", type=int, default=8, dest="steps_per_execution")
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                run = _run(v, Path(tmp) / f"{v}-{r}" / "run", args)
                run["round"] = r
                runs.append(run)
                print(f"round {r} {v}: {run['images_per_second']:.0f} img/s, "
                      f"{run['epoch_seconds']:.2f} s/epoch, {run['wall_seconds']:.0f} s", flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    result = {"command": "python -m bench.multiworker " + " ".join(argv or sys.argv[1:]),
              "args": vars(args), "cpus": os.cpu_count(), "runs": runs, "table": table(runs)}
    path = ROOT / "bench" / "results" / f"multiworker-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print(result["table"])
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
