"""steps_per_execution auto: calls sized from the measured step time."""

from __future__ import annotations

import pytest

from trainer.training.pacing import MAX_STEPS, Pacer, steps_for


@pytest.mark.parametrize("step_seconds, steps", [
    (0.120, 4),  # seed CNN, batch 64, float32, this CPU
    (0.050, 10),
    (0.005, 100),  # a GPU step
    (0.0001, MAX_STEPS),
    (0.0, MAX_STEPS),
    (5.0, 1),
], ids=["cpu-seed-cnn", "cpu-small", "gpu", "tiny", "zero", "slow"])
def test_steps_for_fills_about_half_a_second(step_seconds, steps):
    assert steps_for(step_seconds) == steps


def test_auto_runs_one_step_to_trace_then_sizes_calls_from_the_measurement():
    pacer = Pacer(0)
    assert pacer.next_steps(100) == 1
    pacer.record(1, 3.0)  # the first call traces: not a measurement
    assert pacer.next_steps(100) == 1
    pacer.record(1, 0.01)
    assert pacer.next_steps(100) == 50
    assert pacer.next_steps(7) == 7  # never past the epoch's end
    pacer.record(50, 0.5 * 3)  # steps became 3x slower (smoothed: 2x)
    assert pacer.next_steps(100) == 25


def test_a_configured_value_is_kept():
    pacer = Pacer(8)
    pacer.record(8, 0.001)
    pacer.record(8, 0.001)
    assert pacer.next_steps(100) == 8 and pacer.next_steps(3) == 3
