"""Figures and Markdown tables from a results JSON: ``python -m bench.report RESULTS.json``."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench.common import SEED_CNN_TRAIN_FLOPS, summary

BASELINE_INDEX = {"throughput": 0, "device": 0, "tuning": 1}
QUIET_CORES = 0.25  # a round is "quiet" when no run in it shared the machine with more than this


def run_figures(run: dict) -> dict:
    """Images/s, CPU ms per image over the measured epochs (all but the first)."""
    epochs = run.get("epochs", [])[1:]
    images = sum(e["images"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    cpu = sum(e["cpu_seconds"] for e in epochs)
    return {
        "images_per_second": images / seconds if seconds else None,
        "cpu_ms_per_image": 1000.0 * cpu / images if images else None,
        "peak_rss_mb": run.get("peak_rss_mb"),
    }


def _is_seed64(spec: dict) -> bool:
    return spec["kind"] == "tutorial" or (spec.get("overrides", {}).get("model") == "seed_cnn"
                                          and spec.get("overrides", {}).get("image_size") == 64)


def summarize(results: dict) -> dict:
    peak = summary([c["gflops_best"] for c in results["calibration"]])
    out: dict = {"matmul_gflops": peak}
    peak_flops = (peak["median"] or 0) * 1e9
    for name, entries in results["experiments"].items():
        rows = []
        if name == "pipeline":
            for e in entries:
                ratios, pipe, mem = [], [], []
                for run in e["runs"]:
                    for pair in run["pairs"]:
                        p = pair["pipeline"]["images"] / pair["pipeline"]["seconds"]
                        m = pair["in_memory"]["images"] / pair["in_memory"]["seconds"]
                        pipe.append(p), mem.append(m), ratios.append(p / m)
                rows.append({"label": e["label"], "pipeline_images_per_second": summary(pipe),
                             "in_memory_images_per_second": summary(mem), "ratio": summary(ratios)})
            out[name] = rows
            continue
        if name == "process":
            out[name] = _process_rows(entries)
            continue
        if name == "target":
            for e in entries:
                runs = e["runs"]
                rows.append({
                    "label": e["label"],
                    "seconds_to_target": summary([r.get("seconds_to_target") for r in runs]),
                    "epochs_to_target": summary([r.get("reached_epoch") for r in runs]),
                    "reached": sum(r.get("reached_epoch") is not None for r in runs), "runs": len(runs),
                    "final_test_accuracy": summary([r["test_accuracy"][-1] for r in runs if r["test_accuracy"]]),
                    "peak_rss_mb": summary([r.get("peak_rss_mb") for r in runs]),
                })
            out[name] = rows
            continue
        base = entries[BASELINE_INDEX.get(name, 0)]
        base_by_round = {r["round"]: run_figures(r)["images_per_second"] for r in base["runs"]}
        # Rounds in which another process took CPU during some run: paired ratios mean little there.
        noisy = {r["round"] for e in entries for r in e["runs"]
                 if (r.get("other_cpu_cores") or 0.0) > QUIET_CORES}
        for e in entries:
            figs = [run_figures(r) for r in e["runs"]]
            ips = [f["images_per_second"] for f in figs]
            paired = [f["images_per_second"] / base_by_round[r["round"]]
                      for f, r in zip(figs, e["runs"]) if base_by_round.get(r["round"])]
            paired_quiet = [f["images_per_second"] / base_by_round[r["round"]]
                            for f, r in zip(figs, e["runs"])
                            if base_by_round.get(r["round"]) and r["round"] not in noisy
                            and r.get("other_cpu_cores") is not None]  # older files: unknown
            row = {
                "label": e["label"],
                "images_per_second": summary(ips),
                "ratio_vs_baseline": summary(paired),
                "ratio_quiet_rounds": summary(paired_quiet),
                "cpu_ms_per_image": summary([f["cpu_ms_per_image"] for f in figs]),
                "peak_rss_mb": summary([f["peak_rss_mb"] for f in figs]),
                "cores_busy": summary([f["images_per_second"] * f["cpu_ms_per_image"] / 1000.0
                                       for f in figs if f["images_per_second"]]),
                "other_cpu_cores": summary([r.get("other_cpu_cores") for r in e["runs"]]),
                "train_images": e["runs"][0]["epochs"][0]["images"] if e["runs"] else None,
                "final_test_accuracy": summary([r.get("final_test_accuracy") for r in e["runs"]]),
            }
            if _is_seed64(e["spec"]) and peak_flops:
                row["percent_of_peak"] = summary([100.0 * v * SEED_CNN_TRAIN_FLOPS / peak_flops
                                                  for v in ips if v])
            rows.append(row)
        out[name] = rows
        if name == "throughput":
            out["precision_accuracy"] = _precision_accuracy(entries)
    return out


def _precision_accuracy(entries: list[dict]) -> dict | None:
    """Test accuracy of the default (auto precision) run minus the float32 run, per round (same
    seed), in points; None unless both variants are there. The default run is the seed CNN with
    nothing else set; the float32 run differs from it only by ``precision``."""
    def overrides(e: dict) -> dict:
        return e["spec"].get("overrides") or {}

    auto = next((e for e in entries if overrides(e) == {"model": "seed_cnn", "image_size": 64}), None)
    f32 = next((e for e in entries if auto is not None
                and overrides(e) == {**overrides(auto), "precision": "float32"}), None)
    if auto is None or f32 is None:
        return None
    f32_acc = {r["round"]: r.get("final_test_accuracy") for r in f32["runs"]}
    pairs = [(100.0 * r["final_test_accuracy"], 100.0 * f32_acc[r["round"]]) for r in auto["runs"]
             if r.get("final_test_accuracy") is not None and f32_acc.get(r["round"]) is not None]
    if not pairs:
        return {"rounds": 0}
    diffs = [a - f for a, f in pairs]
    return {"rounds": len(pairs), "difference_points": summary(diffs),
            "mean_difference_points": statistics.fmean(diffs),
            "mean_auto": statistics.fmean(a for a, _ in pairs),
            "mean_float32": statistics.fmean(f for _, f in pairs)}


def _final_accuracy(run: dict) -> float | None:
    acc = run.get("test_accuracy")
    return acc[-1] if isinstance(acc, list) and acc else acc


def _process_rows(entries: list[dict]) -> list[dict]:
    """Whole-process runs: seconds, accuracy, and the paired ratio baseline / variant per round."""
    base = {r["round"]: r["wall_seconds"] for r in entries[0]["runs"]}
    rows = []
    for e in entries:
        runs = e["runs"]
        ratios = [base[r["round"]] / r["wall_seconds"] for r in runs if r["round"] in base]
        phases = {}
        for r in runs:
            for k, v in (r.get("phase_seconds") or {}).items():
                phases.setdefault(k, []).append(v)
        rows.append({
            "label": e["label"],
            "wall_seconds": summary([r["wall_seconds"] for r in runs]),
            "speedup_vs_baseline": summary(ratios),
            "cpu_seconds": summary([r.get("process_cpu_seconds") for r in runs]),
            "final_test_accuracy": summary([_final_accuracy(r) for r in runs]),
            "reached": sum((_final_accuracy(r) or 0) >= 0.97 for r in runs), "runs": len(runs),
            "epochs": summary([r.get("epochs") or r.get("epochs_completed") for r in runs]),
            "other_cpu_cores": summary([r.get("other_cpu_cores") for r in runs]),
            "phase_seconds": {k: summary(v) for k, v in phases.items()},
        })
    return rows


def _fmt(s: dict, digits: int = 0, pct: bool = False) -> str:
    if not s or s.get("median") is None:
        return "-"
    f = (lambda v: f"{100 * v:.{digits}f}%") if pct else (lambda v: f"{v:,.{digits}f}")
    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}-{f(s['max'])})"


def _flags(flags: list | None) -> str:
    return "not recorded" if flags is None else (", ".join(flags) or "none")


def _all_runs(results: dict) -> list[dict]:
    return [r for es in results["experiments"].values() for e in es for r in e["runs"]]


def markdown(results: dict) -> str:
    s = summarize(results)
    m = results["machine"]
    v = results.get("versions", {})
    lines = [
        (f"Measured {results['date']} on {m.get('model_name', m.get('cpu'))}, {m.get('cores')} cores"
         f" ({m.get('hypervisor_vendor', 'bare metal')} VM), {m.get('memory_gb', '?')} GB,"
         f" bf16 flags: {_flags(m.get('bf16_flags'))};"
         f" TensorFlow {v.get('tensorflow', '?')}, Keras {v.get('keras', '?')};"
         f" commit {results.get('commit', '?')}."),
        (f"Command: `{results['command']}`. Figures are median (min-max) over runs; ratios are paired"
         " within a round."),
        (f"Machine peak (float32 2048x2048 matmul, best of each round): {_fmt(s['matmul_gflops'], 1)}"
         f" GFLOP/s. Quiet rounds [n]: no run in the round shared the machine with more than"
        f" {QUIET_CORES} cores of other processes. Other processes' CPU use during each run:"
         f" {_fmt(summary([r.get('other_cpu_cores') for r in _all_runs(results)]), 2)} cores"
         f" (1-minute load average before each: {_fmt(summary([r.get('load_before') for r in _all_runs(results)]), 1)})."),
        "",
    ]
    titles = {
        "throughput": "Training throughput: seed CNN, 64x64x3 digits, same arrays",
        "device": "CPU device choices: seed CNN 64x64x3 (trainer, batch 64)",
        "tuning": "Trainer knobs: seed CNN 64x64x3 (ratio vs the defaults)",
    }
    for name in ("throughput", "device", "tuning"):
        if name not in s:
            continue
        rows = s[name]
        lines += [f"**{titles[name]}** ({rows[0]['train_images']} training images per epoch)", "",
                  ("| variant | images/s | ratio | ratio, quiet rounds | CPU ms/image | cores busy | % of peak"
                   " | peak RSS MB | others' CPU (cores) | test accuracy |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            quiet = r["ratio_quiet_rounds"]
            rounds = f" [{quiet['n']}]" if quiet["n"] else ""
            lines.append(f"| {r['label']} | {_fmt(r['images_per_second'])} | {_fmt(r['ratio_vs_baseline'], 2)}"
                         f" | {_fmt(quiet, 2)}{rounds}"
                         f" | {_fmt(r['cpu_ms_per_image'], 2)} | {_fmt(r.get('cores_busy'), 2)}"
                         f" | {_fmt(r.get('percent_of_peak'), 1)} | {_fmt(r['peak_rss_mb'])}"
                         f" | {_fmt(r.get('other_cpu_cores'), 2)}"
                         f" | {_fmt(r.get('final_test_accuracy'), 1, pct=True)} |")
        lines.append("")
        acc = s.get("precision_accuracy") if name == "throughput" else None
        if acc and acc["rounds"]:
            lines += [(f"Test accuracy, default (auto precision) vs float32, same seed per round over"
                       f" {acc['rounds']} rounds (seeds): mean {acc['mean_auto']:.2f}% vs"
                       f" {acc['mean_float32']:.2f}%, difference {acc['mean_difference_points']:+.2f} points"
                       f" (per round: median {_fmt(acc['difference_points'], 2)})."), ""]
    if "pipeline" in s:
        lines += ["**Input pipeline: the trainer's tf.data pipeline vs the same batches already in memory**", "",
                  "| model | pipeline images/s | in-memory images/s | ratio |", "|---|---|---|---|"]
        for r in s["pipeline"]:
            lines.append(f"| {r['label']} | {_fmt(r['pipeline_images_per_second'])}"
                         f" | {_fmt(r['in_memory_images_per_second'])} | {_fmt(r['ratio'], 3)} |")
        lines.append("")
    if "target" in s:
        lines += ["**Wall time from process start to >= 97% test accuracy on builtin:digits**", "",
                  "| recipe | seconds | epochs | reached | final test accuracy | peak RSS MB |",
                  "|---|---|---|---|---|---|"]
        for r in s["target"]:
            lines.append(f"| {r['label']} | {_fmt(r['seconds_to_target'], 1)} | {_fmt(r['epochs_to_target'])}"
                         f" | {r['reached']}/{r['runs']} | {_fmt(r['final_test_accuracy'], 1, pct=True)}"
                         f" | {_fmt(r['peak_rss_mb'])} |")
        lines.append("")
    if "process" in s:
        rows = s["process"]
        lines += [("**Whole process, start to exit, to a >= 97% digits model** (paired per round:"
                   " the bare script's seconds over each variant's)"), "",
                  ("| run | seconds | speed-up vs bare script | CPU seconds (all its processes) | epochs"
                   " | test accuracy | >= 97% | others' CPU (cores) |"), "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['label']} | {_fmt(r['wall_seconds'], 1)} | {_fmt(r['speedup_vs_baseline'], 2)}"
                         f" | {_fmt(r['cpu_seconds'], 1)} | {_fmt(r['epochs'])} | {_fmt(r['final_test_accuracy'], 1, pct=True)}"
                         f" | {r['reached']}/{r['runs']} | {_fmt(r['other_cpu_cores'], 2)} |")
        lines.append("")
        for r in rows:
            if not r["phase_seconds"]:
                continue
            names = list(r["phase_seconds"])
            lines += [(f"**Where the trainer's time goes** ({r['label']}; `phase_seconds` in"
                       " metrics.json; report and export overlap)"), "",
                      "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                      "| " + " | ".join(_fmt(r["phase_seconds"][k], 2) for k in names) + " |", ""]
    return "\n".join(lines)


def one_line(name: str, run: dict) -> str:
    """Progress line printed after each child."""
    if name == "pipeline":
        ratios = [p["pipeline"]["seconds"] and (p["in_memory"]["seconds"] / p["pipeline"]["seconds"])
                  for p in run["pairs"]]
        return f"pipeline/in-memory {statistics.median(ratios):.3f}"
    if name == "process":
        return f"{run['wall_seconds']:.1f}s, test accuracy {_final_accuracy(run)}"
    if name == "target":
        t = run.get("seconds_to_target")
        return (f"97% at epoch {run['reached_epoch']} after {t:.1f}s" if t is not None
                else f"not reached (last {run['test_accuracy'][-1:]})")
    f = run_figures(run)
    ips = f["images_per_second"]
    return f"{ips:.0f} img/s, {f['cpu_ms_per_image']:.2f} CPU ms/img" if ips else "no measured epoch"


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0]).read_text())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
