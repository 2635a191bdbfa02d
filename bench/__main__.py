"""``python -m bench [--quick] [--rounds N] [--only EXP ...]``: the trainer vs the tutorial's script.

Every measurement runs in its own subprocess (fresh TensorFlow). Variants alternate within each
round and the order is reversed every other round (A B C, C B A, ...), so all of them see the
same machine conditions; the first epoch of each run (tracing) is excluded. Writes
``bench/results/<UTC date-time>.json`` and prints the Markdown tables (bench/report.py).

Experiments (``--only``):
  throughput  seed CNN at 64x64x3 on digits: the tutorial's script (batch 32) vs the trainer
              at batch 32 and at its default batch 64
  device      the trainer with XLA on, with mixed_bfloat16 (what ``auto`` turns off on CPU)
  tuning      the trainer's knobs: steps_per_execution, batch size, thread pools
  pipeline    the trainer's tf.data pipeline vs the same batches already in memory
  target      wall time from process start to >= 97% test accuracy: the tutorial's recipe vs
              the trainer's defaults (resnet_small at 16x16)
  process     whole processes, start to exit, to a >= 97% digits model: the bare Keras script
              (bench/bare.py) vs ``python -m trainer --data builtin:digits --epochs 3`` with its
              report and export; the trainer's phase_seconds give the phase table
A float32 matmul calibrates the machine's peak in every round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, report

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("throughput", "device", "pipeline", "target", "process", "tuning")
DEFAULT_EXPERIMENTS = ("throughput", "device", "pipeline", "target", "process")
TRAINER_CLI = ["--data", "builtin:digits", "--epochs", "3"]

SEED64 = {"model": "seed_cnn", "image_size": 64}


def variants(args) -> dict[str, list[dict]]:
    """Experiment -> its variants: (label, child spec). Sizes shrink in --quick mode."""
    q = args.quick
    ep = 2 if q else args.epochs
    lim = 128 if q else 0
    small = 128 if q else 512  # the slow device variants train on fewer images per epoch
    out = {
        # The trainer's seed (split, initialization, shuffle) changes per round, the same for
        # every variant of a round: the accuracy columns are then a spread over seeds, and
        # bf16 vs float32 a paired comparison per seed (``precision_accuracy`` in the summary).
        "throughput": [
            {"label": "tutorial script, batch 32", "kind": "tutorial", "epochs": ep, "train_limit": lim},
            {"label": "trainer, batch 32", "kind": "trainer", "epochs": ep, "train_limit": lim,
             "seed_per_round": True, "overrides": {**SEED64, "batch_size": 32}},
            {"label": "trainer, batch 64 (default; auto precision: mixed_bfloat16 on this CPU)",
             "kind": "trainer", "epochs": ep, "train_limit": lim, "seed_per_round": True, "overrides": SEED64},
            {"label": "trainer, batch 64, float32 (precision set)", "kind": "trainer", "epochs": ep,
             "train_limit": lim, "seed_per_round": True, "overrides": {**SEED64, "precision": "float32"}},
        ],
        "device": [
            {"label": "trainer, float32, XLA off", "kind": "trainer", "epochs": 3 if not q else 2,
             "train_limit": small, "overrides": {**SEED64, "precision": "float32"}},
            {"label": "trainer, float32, XLA on", "kind": "trainer", "epochs": 3 if not q else 2,
             "train_limit": small, "overrides": {**SEED64, "precision": "float32", "jit_compile": "on"}},
            {"label": "trainer, mixed_bfloat16 (what auto picks on this CPU)", "kind": "trainer",
             "epochs": 3 if not q else 2, "train_limit": small, "overrides": SEED64},
        ],
        "tuning": [
            {"label": f"trainer, {name}", "kind": "trainer", "epochs": ep, "train_limit": lim,
             "overrides": {**SEED64, **ov}, **extra}
            for name, ov, extra in [
                ("steps_per_execution 1", {"steps_per_execution": 1}, {}),
                ("steps_per_execution 8", {"steps_per_execution": 8}, {}),
                ("steps_per_execution 32", {"steps_per_execution": 32}, {}),
                ("batch 128", {"batch_size": 128}, {}),
                ("intra-op 1 thread", {}, {"threads": {"intra": 1}}),
                ("inter-op 1 thread", {}, {"threads": {"inter": 1}}),
                ("oneDNN off (Eigen kernels)", {}, {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}}),
                ("tf.data autotune on (before the fix)", {}, {"tf_data_autotune": True}),
            ]
        ],
        "pipeline": [
            {"label": "resnet_small 16x16, batch 64 (defaults)", "kind": "pipeline", "epochs": 1,
             "pairs": 2 if q else 6, "train_limit": lim, "overrides": {}},
            {"label": "seed_cnn 64x64, batch 64", "kind": "pipeline", "epochs": 1,
             "pairs": 2 if q else 4, "train_limit": lim, "overrides": SEED64},
        ],
        "target": [
            {"label": "tutorial recipe: seed CNN 64x64, batch 32", "kind": "tutorial",
             "epochs": 3 if q else 30, "target": common.TARGET_ACCURACY, "train_limit": lim},
            {"label": "trainer, same recipe: seed_cnn 64x64, batch 32", "kind": "trainer",
             "epochs": 3 if q else 30, "target": common.TARGET_ACCURACY, "train_limit": lim,
             "overrides": {**SEED64, "batch_size": 32}},
            {"label": "trainer defaults: resnet_small 16x16, batch 64", "kind": "trainer",
             "epochs": 3 if q else 30, "target": common.TARGET_ACCURACY, "train_limit": lim,
             "overrides": {}},
        ],
        "process": [
            {"label": "bare Keras script (bench/bare.py): seed CNN 64x64, batch 32, stops at 97%",
             "kind": "bare"},
            {"label": "python -m trainer " + " ".join(TRAINER_CLI) + " (defaults; report and export)",
             "kind": "cli", "args": TRAINER_CLI},
        ],
    }
    return {k: v for k, v in out.items() if k in args.only}


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), None if unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished child so far
    return usage.ru_utime + usage.ru_stime


def _command(spec: dict, scratch: str) -> list[str]:
    """The child's command line: a measuring child, the bare script, or the trainer's CLI."""
    if spec["kind"] == "bare":
        return [sys.executable, "-m", "bench.bare", str(spec.get("seed", 0))]
    if spec["kind"] == "cli":
        return [sys.executable, "-m", "trainer", *spec["args"], "--output", f"{scratch}/run", "-q"]
    return [sys.executable, "-m", "bench.child", json.dumps(spec)]


def spawn(spec: dict, timeout_seconds: float) -> dict:
    """Run one child; its result plus wall time since spawn and the load average around it."""
    scratch = tempfile.mkdtemp(prefix="kubetrain-bench-")  # cold: no caches from earlier runs
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), KUBETRAIN_SCRATCH=scratch,
               **spec.get("env", {}))
    load = os.getloadavg()[0]
    busy_before = busy_cpu_seconds()
    children_cpu = _children_cpu_seconds()
    spawned = time.time()
    proc = subprocess.run(_command(spec, scratch), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_seconds, check=False)
    wall = time.time() - spawned
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if spec["kind"] == "cli" and proc.returncode == 0:  # the trainer's own record of the run
        metrics = json.loads(Path(scratch, "run", "report", "metrics.json").read_text())
        keep = ("test_accuracy", "epochs_completed", "phase_seconds", "precision", "images_per_second")
        lines = ["BENCH_RESULT " + json.dumps({k: metrics.get(k) for k in keep})]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark child {spec.get('label', spec['kind'])!r} failed "
                           f"(exit {proc.returncode}):\n{tail}")
    shutil.rmtree(scratch, ignore_errors=True)
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result.setdefault("process_cpu_seconds", _children_cpu_seconds() - children_cpu)
    if result.get("reached_at") is not None:
        result["seconds_to_target"] = result["reached_at"] - spawned
    result.update(wall_seconds=wall, load_before=load, load_after=os.getloadavg()[0])
    busy_after = busy_cpu_seconds()
    if busy_before is not None and busy_after is not None:  # what everything else on the machine used
        result["other_cpu_cores"] = max(0.0, busy_after - busy_before - result["process_cpu_seconds"]) / wall
    return result


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Hypervisor vendor", "L3 cache"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except OSError:
        pass
    try:  # what the precision choice reads (trainer/runtime/precision.py)
        from trainer.runtime.precision import NATIVE_BF16_FLAGS, parse_cpuinfo

        _, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        info["bf16_flags"] = [f for f in (*NATIVE_BF16_FLAGS, "amx_tile") if f in flags]
    except OSError:
        pass
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def versions() -> dict:
    code = ("import json, numpy, tensorflow as tf, keras; print(json.dumps({'tensorflow': tf.__version__,"
            " 'keras': keras.__version__, 'numpy': numpy.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "trainer", "bench"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round, tiny subsets: checks the harness, not speed")
    p.add_argument("--rounds", type=int, default=None, help="rounds of alternating runs (default 5, quick 1)")
    p.add_argument("--target-rounds", type=int, default=None, help="rounds of the time-to-target runs (default 3)")
    p.add_argument("--process-rounds", type=int, default=None,
                   help="rounds of the whole-process runs, bare script vs trainer (default 5)")
    p.add_argument("--device-rounds", type=int, default=2,
                   help="rounds of the (slow) XLA / bfloat16 runs (default 2)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per throughput run (the first is excluded)")
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(DEFAULT_EXPERIMENTS),
                   help=f"experiments to run (default: {' '.join(DEFAULT_EXPERIMENTS)})")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/<date>.json)")
    p.add_argument("--timeout-seconds", type=float, default=1800, help="per child process")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.target_rounds is None:
        args.target_rounds = 1 if args.quick else 3
    if args.process_rounds is None:
        args.process_rounds = 1 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    exps = variants(args)
    results: dict = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "quick": args.quick,
        "seed_cnn_train_mflop_per_image": common.SEED_CNN_TRAIN_FLOPS / 1e6,
        "calibration": [],
        "experiments": {name: [{"label": v["label"], "spec": v, "runs": []} for v in vs]
                        for name, vs in exps.items()},
    }
    out = args.out or ROOT / "bench" / "results" / (started.strftime("%Y-%m-%dT%H%M%SZ") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1) + "\n")

    def measure(name: str, index: int, round_no: int) -> None:
        entry = results["experiments"][name][index]
        spec = dict(entry["spec"], seed=round_no)
        print(f"  {name}: {entry['label']} ...", end=" ", file=sys.stderr, flush=True)
        run = spawn(spec, args.timeout_seconds)
        run["round"] = round_no
        entry["runs"].append(run)
        print(report.one_line(name, run), file=sys.stderr, flush=True)
        save()

    matmul = {"kind": "matmul", "n": 512 if args.quick else 2048, "seconds": 1.0 if args.quick else 3.0}
    alternating = [n for n in ("throughput", "device", "tuning") if n in exps]
    for r in range(args.rounds if alternating else 0):
        print(f"round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        results["calibration"].append(dict(spawn(matmul, args.timeout_seconds), round=r))
        for name in alternating:
            if name == "device" and r >= args.device_rounds:
                continue
            order = list(range(len(exps[name])))
            for i in order if r % 2 == 0 else order[::-1]:
                measure(name, i, r)
    if "pipeline" in exps:
        for i in range(len(exps["pipeline"])):
            measure("pipeline", i, 0)
    if "target" in exps:
        for r in range(args.target_rounds):
            order = list(range(len(exps["target"])))
            for i in order if r % 2 == 0 else order[::-1]:
                measure("target", i, r)
    if "process" in exps:
        for r in range(args.process_rounds):
            order = list(range(len(exps["process"])))
            for i in order if r % 2 == 0 else order[::-1]:
                measure("process", i, r)
    if not results["calibration"]:
        results["calibration"].append(dict(spawn(matmul, args.timeout_seconds), round=0))
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["summary"] = report.summarize(results)
    save()
    print(report.markdown(results))
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
