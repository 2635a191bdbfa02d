"""Precision and XLA per machine: decided from what the hardware has, not from "CPU vs GPU".

Measured (docs/benchmarks.md): on an AMD EPYC *without* bf16 units mixed_bfloat16 trained the
seed CNN at 0.14x the float32 rate (bf16 emulated through float32 conversions). With AMX
(``amx_bf16``, Xeons since Sapphire Rapids) oneDNN's bf16 matrix tiles are several times its
float32 rate. ``avx512_bf16`` alone (AVX-512 bf16 dot products, e.g. AMD EPYC Zen 4) went both
ways on machines that report the same flags: the seed CNN trained at ~2x in bf16 on one and at
0.86x on another (a 4096x4096 matmul at 124 GFLOP/s in bf16 against 212 in float32), so there
the choice is measured, not read from the flag. XLA was 0.40x on CPU. So:

* ``decide(machine, precision, jit_compile)`` is a pure function of observed facts (CPU flags,
  CPU model, GPU compute capabilities) and the config; it returns the choice and the reason.
  GPUs: compute capability >= 8.0 (Ampere on) mixed_bfloat16 (native bf16 tensor cores, no loss
  scaling), 7.x mixed_float16 (fp16 tensor cores), older float32; XLA on. CPUs: amx_bf16 ->
  mixed_bfloat16, a CPU with no bf16 flag at all -> float32; XLA off.
* Where the rules cannot tell (``avx512_bf16`` without AMX, ARM's ``bf16``: bf16 instructions
  whose speed under TensorFlow's kernels differs by CPU and build), ``decide`` asks for a
  calibration: ``measure_bf16_ratio`` times training steps of a small CNN in both precisions,
  alternating (~3-6 s), and ``cached_calibration`` caches the ratio under the scratch cache,
  keyed by CPU model, flags and TensorFlow version, so a node pays for it once; bf16 is chosen
  only if it trains >= ``CALIBRATION_WIN`` x float32.

``observe()`` reads the facts (``/proc/cpuinfo``, TensorFlow's GPU details); everything else
here is pure and tested with both flag sets (tests/unit/test_precision.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# x86 flags (Linux /proc/cpuinfo names) whose presence means bf16 beats float32 under oneDNN.
NATIVE_BF16_FLAGS = ("amx_bf16",)  # AMX tiles
# Flags that announce bf16 arithmetic whose speed under TensorFlow's kernels we cannot predict:
# x86 AVX-512 bf16 dot products without AMX (measured ~2x on one such CPU, 0.86x on another), and
# aarch64 FEAT_BF16 (Graviton3, Neoverse V1/N2): depends on the CPU and the build.
UNSURE_BF16_FLAGS = ("avx512_bf16", "bf16")
TENSOR_CORE_FP16 = (7, 0)  # Volta: fp16 tensor cores
TENSOR_CORE_BF16 = (8, 0)  # Ampere: bf16 tensor cores as fast as fp16, no loss scaling needed
CALIBRATION_WIN = 1.2  # mixed_bfloat16 must beat float32 by this much to be chosen on a CPU


@dataclass(frozen=True)
class Machine:
    """The facts the choice depends on."""

    cpu_model: str = ""
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    arch: str = ""
    gpu_capabilities: tuple[tuple[int, int], ...] = ()  # one per visible GPU

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_capabilities)


@dataclass(frozen=True)
class Choice:
    precision: str  # a Keras dtype policy name
    jit_compile: bool
    reason: str  # why, in one line (logged and written to metrics.json)
    calibrate: bool = False  # the rules could not tell: measure (see ``calibrate``)


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(CPU model name, flags) from /proc/cpuinfo text (x86 ``flags``, ARM ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, frozenset(flags)


def _cpu_precision(machine: Machine, calibration: float | None) -> tuple[str, str, bool]:
    native = [f for f in NATIVE_BF16_FLAGS if f in machine.cpu_flags]
    if native:
        return "mixed_bfloat16", f"CPU has {'+'.join(native)} (bf16 matrix units)", False
    unsure = [f for f in UNSURE_BF16_FLAGS if f in machine.cpu_flags]
    if not unsure:
        return "float32", "CPU has no bf16 units (amx_bf16/avx512_bf16): bf16 would be emulated, ~0.14x", False
    what = f"CPU has {unsure[0]} but no amx_bf16"
    if calibration is None:
        return "float32", f"{what}: bf16 may be faster or slower; calibration needed", True
    if calibration >= CALIBRATION_WIN:
        return "mixed_bfloat16", f"{what}; measured: bf16 trains {calibration:.2f}x float32 here", False
    return "float32", (f"{what}; measured: bf16 trains {calibration:.2f}x float32 here"
                       f" (< {CALIBRATION_WIN}x: not worth the lower precision)"), False


def _gpu_precision(machine: Machine) -> tuple[str, str]:
    cc = min(machine.gpu_capabilities)  # the slowest GPU decides: all replicas run one policy
    shown = f"{cc[0]}.{cc[1]}"
    if cc >= TENSOR_CORE_BF16:
        return "mixed_bfloat16", f"GPU compute capability {shown} has bf16 tensor cores (no loss scaling)"
    if cc >= TENSOR_CORE_FP16:
        return "mixed_float16", f"GPU compute capability {shown} has fp16 tensor cores"
    return "float32", f"GPU compute capability {shown} has no tensor cores"


def decide(machine: Machine, precision: str = "auto", jit_compile: str = "auto",
           calibration: float | None = None) -> Choice:
    """The precision and XLA setting for ``machine``; config values other than auto win.

    ``calibration`` is a measured bf16/float32 speed ratio on this CPU, when one was asked for.
    """
    reasons = []
    needs_calibration = False
    if precision != "auto":
        chosen = precision
        reasons.append("precision set in config")
    elif machine.has_gpu:
        chosen, why = _gpu_precision(machine)
        reasons.append(why)
    else:
        chosen, why, needs_calibration = _cpu_precision(machine, calibration)
        reasons.append(why)
    if jit_compile != "auto":
        jit = jit_compile == "on"
        reasons.append(f"XLA {jit_compile} in config")
    else:
        jit = machine.has_gpu
        reasons.append("XLA on for GPU" if jit else "XLA off on CPU (0.40x measured)")
    return Choice(chosen, jit, "; ".join(reasons), needs_calibration)


# ---------------------------------------------------------------------------------------------
# Facts and calibration (I/O)


def observe(gpus: list | None = None) -> Machine:
    """This machine's facts; ``gpus`` are TensorFlow's physical GPU devices (listed already)."""
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = platform.processor(), frozenset()
    caps = []
    if gpus:
        import tensorflow as tf

        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            caps.append(tuple(details.get("compute_capability") or (0, 0)))
    return Machine(model, flags, platform.machine(), tuple(caps))


def cache_key(machine: Machine, tf_version: str) -> str:
    raw = json.dumps([machine.cpu_model, sorted(machine.cpu_flags), machine.arch, tf_version])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def cached_calibration(cache_dir: Path, machine: Machine, tf_version: str,
                       measure: Callable[[], float]) -> float:
    """The bf16/float32 ratio for this CPU model and TF version: from the cache, or measured once."""
    path = cache_dir / f"precision-{cache_key(machine, tf_version)}.json"
    try:
        return float(json.loads(path.read_text())["bf16_over_float32"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ratio = measure()
    store_calibration(cache_dir, machine, tf_version, ratio)
    return ratio


def store_calibration(cache_dir: Path, machine: Machine, tf_version: str, ratio: float) -> None:
    """Keep ``ratio`` as this CPU's calibration (atomically; a cache that cannot be written only
    costs the next run a new calibration)."""
    path = cache_dir / f"precision-{cache_key(machine, tf_version)}.json"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"bf16_over_float32": ratio, "cpu_model": machine.cpu_model,
                                   "tensorflow": tf_version, "measured_at": time.time()}))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the precision calibration at %s: %s", path, exc)


def training_rates(rounds: int = 3, steps: int = 4, image_size: int = 32, batch: int = 32,
                   policies: tuple[str, ...] = ("float32", "mixed_bfloat16")) -> dict[str, float]:
    """Training images/s of a small CNN (the seed CNN's layers) per dtype policy, in this process.

    The policies alternate, ``rounds`` times ``steps`` steps each after one traced warm-up step,
    and each keeps its best round: other work on the machine slows single rounds, not the best.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 255, (batch, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, (batch,)).astype("int32"))

    def make_step(policy: str):
        layers = keras.layers
        model = keras.Sequential([
            keras.Input((image_size, image_size, 3)),
            layers.Rescaling(1 / 255, dtype=policy),
            layers.Conv2D(32, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(dtype=policy),
            layers.Conv2D(64, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(dtype=policy),
            layers.Flatten(dtype=policy),
            layers.Dense(128, activation="relu", dtype=policy),
            layers.Dense(10, activation="softmax", dtype="float32"),
        ])
        opt = keras.optimizers.Adam()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x)))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        step().numpy()  # trace and warm up
        return step

    run = {policy: make_step(policy) for policy in policies}
    best = dict.fromkeys(policies, 0.0)
    for _ in range(rounds):
        for policy, step in run.items():
            t0 = time.perf_counter()
            for _ in range(steps - 1):
                step()
            step().numpy()
            best[policy] = max(best[policy], steps * batch / (time.perf_counter() - t0))
    return best


def measure_bf16_ratio() -> float:
    """Training speed of a small CNN in mixed_bfloat16 over float32 on this CPU (~3-6 s)."""
    rates = training_rates()
    ratio = rates["mixed_bfloat16"] / rates["float32"]
    log.info("precision calibration: float32 %.0f img/s, mixed_bfloat16 %.0f img/s (%.2fx)",
             rates["float32"], rates["mixed_bfloat16"], ratio)
    return ratio


def matmul_gflops(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul in ``dtype`` (float32 or bfloat16) on this CPU."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    matmul().numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul().numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
