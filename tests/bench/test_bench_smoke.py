"""Smoke test of the benchmark harness (bench/): it runs and its results have the documented shape.

No timing is asserted: speed is measured by ``make bench`` and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import pytest

from bench import __main__ as bench_main
from bench import report

pytestmark = pytest.mark.slow


def test_children_and_report_have_the_documented_shape():
    tiny = {"epochs": 2, "train_limit": 64}
    runs = {
        "tutorial": bench_main.spawn({"kind": "tutorial", **tiny}, timeout_seconds=300),
        "trainer": bench_main.spawn({"kind": "trainer", **tiny, "overrides": bench_main.SEED64},
                                    timeout_seconds=300),
        "matmul": bench_main.spawn({"kind": "matmul", "n": 256, "seconds": 0.2}, timeout_seconds=120),
    }
    for name in ("tutorial", "trainer"):
        run = runs[name]
        assert [e["images"] for e in run["epochs"]] == [64, 64], name
        assert all(e["seconds"] > 0 and e["cpu_seconds"] > 0 for e in run["epochs"]), name
        assert run["peak_rss_mb"] > 0 and run["wall_seconds"] > 0
    assert runs["matmul"]["gflops_best"] > 0

    results = {
        "date": "2026-01-01T00:00:00+00:00", "command": "python -m bench (smoke)", "commit": "test",
        "machine": bench_main.machine(), "versions": {}, "quick": True,
        "calibration": [dict(runs["matmul"], round=0)],
        "experiments": {"throughput": [
            {"label": "tutorial", "spec": {"kind": "tutorial"}, "runs": [dict(runs["tutorial"], round=0)]},
            {"label": "trainer", "spec": {"kind": "trainer", "overrides": bench_main.SEED64},
             "runs": [dict(runs["trainer"], round=0)]},
        ]},
    }
    summary = report.summarize(results)
    rows = summary["throughput"]
    assert [r["label"] for r in rows] == ["tutorial", "trainer"]
    assert rows[0]["ratio_vs_baseline"]["median"] == pytest.approx(1.0)
    for row in rows:
        for key in ("images_per_second", "cpu_ms_per_image", "percent_of_peak", "peak_rss_mb"):
            assert row[key]["median"] > 0, (row["label"], key)
    text = report.markdown(dict(results, summary=summary))
    assert "| trainer |" in text and "GFLOP/s" in text


def test_precision_accuracy_pairs_the_default_and_float32_runs_by_round():
    """The bf16-vs-float32 accuracy line compares the two variants round by round (same seed)."""
    variants = {v["label"]: v for v in bench_main.variants(bench_main.parse_args(["--only", "throughput"]))["throughput"]}
    accuracies = {"trainer, batch 64 (default; auto precision: mixed_bfloat16 on this CPU)": [0.98, 0.98, 0.96],
                  "trainer, batch 64, float32 (precision set)": [0.96, 0.97, 0.97],
                  "trainer, batch 32": [0.50, 0.50, 0.50]}  # not part of the pair
    entries = [{"label": label, "spec": variants[label],
                "runs": [{"round": r, "final_test_accuracy": a} for r, a in enumerate(accs)]}
               for label, accs in accuracies.items()]
    acc = report._precision_accuracy(entries)
    assert acc["rounds"] == 3
    assert acc["difference_points"]["median"] == pytest.approx(1.0)  # per round: +2, +1, -1 points
    assert acc["mean_difference_points"] == pytest.approx(2 / 3)
    assert acc["mean_auto"] == pytest.approx(97 + 1 / 3) and acc["mean_float32"] == pytest.approx(96 + 2 / 3)
    assert report._precision_accuracy(entries[2:]) is None
