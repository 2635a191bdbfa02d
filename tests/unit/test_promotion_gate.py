"""The promotion gate on simulated nights (bench/promotion_gate.py, seeded): two equally good
models are promoted at most at promotion_alpha's rate, and a 3-point improvement on 1,000
compared images is promoted most nights (the power docs/reliability.md states)."""

from __future__ import annotations

from bench.promotion_gate import clopper_pearson, simulate


def test_equal_models_are_falsely_promoted_at_most_at_alpha():
    for n in (300, 1000):
        row = simulate(2000, n, 0.0, alpha=0.05, seed=11)
        assert row["ci95"][0] <= 0.05, row  # not significantly above alpha
        assert row["rate"] <= 0.06, row


def test_a_real_improvement_is_promoted_with_the_stated_power():
    row = simulate(1000, 1000, 0.03, alpha=0.05, seed=12)
    assert row["ci95"][1] >= 0.80 and row["rate"] >= 0.75, row


def test_clopper_pearson_covers_the_edges():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    lo, hi = clopper_pearson(50, 1000)
    assert lo < 0.05 < hi
