"""How many training steps to run per call into the compiled graph (``steps_per_execution``).

Each call costs the host a Python round trip and one sync (the loop reads a 3-float result),
~0.1-1 ms. On this 2-core CPU a 64-image step takes ~60-120 ms, so one step per call already
hides that (docs/benchmarks.md: 1, 8 and 32 steps train at the same rate); on a GPU a step takes
a few milliseconds and a call per step would leave the device idle between calls (a sync per step). So the
default (``steps_per_execution: 0``) sizes calls from the measured step time: as many steps as
fit in ``TARGET_CALL_SECONDS`` (1..``MAX_STEPS``). That also bounds how long a SIGTERM waits for
the step boundary where the checkpoint is written. The first call (which traces the graph) runs
one step and is not measured; every later call refines the estimate.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

TARGET_CALL_SECONDS = 0.5
MAX_STEPS = 128
MULTI_WORKER_STEPS = 8  # workers must run calls of the same size; auto is measured per process


def steps_for(step_seconds: float, target_seconds: float = TARGET_CALL_SECONDS,
              max_steps: int = MAX_STEPS) -> int:
    """Steps per call so that one call takes about ``target_seconds``."""
    if not math.isfinite(step_seconds) or step_seconds <= 0:
        return max_steps
    return max(1, min(max_steps, int(target_seconds / step_seconds)))


class Pacer:
    """``configured`` steps per call, or (0 = auto) sized from the calls measured so far."""

    def __init__(self, configured: int):
        self.configured = configured
        self.step_seconds: float | None = None
        self._calls = 0
        self._logged = False

    def next_steps(self, steps_left: int) -> int:
        if self.configured:
            n = self.configured
        elif self.step_seconds is None:
            n = 1  # the first call traces; the second measures
        else:
            n = steps_for(self.step_seconds)
        return max(1, min(n, steps_left))

    def record(self, steps: int, seconds: float) -> None:
        """One call of ``steps`` steps took ``seconds`` (wall, including the result's sync)."""
        self._calls += 1
        if self.configured or self._calls == 1 or steps <= 0:
            return
        per_step = seconds / steps
        # Smooth: a step that takes longer once (another process, a checkpoint) moves it halfway.
        self.step_seconds = per_step if self.step_seconds is None else 0.5 * (self.step_seconds + per_step)
        if not self._logged:
            self._logged = True
            log.info("steps_per_execution auto: %d (one step takes %.1f ms)",
                     steps_for(self.step_seconds), 1000 * self.step_seconds)
