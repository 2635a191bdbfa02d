"""Precision and XLA per machine: decided from what the hardware has, not from "CPU vs GPU".

Measured (docs/benchmarks.md): on an AMD EPYC *without* bf16 units mixed_bfloat16 trained the
seed CNN at 0.14x the float32 rate (bf16 emulated through float32 conversions); on a CPU *with*
them (``avx512_bf16`` here, ``amx_bf16`` on Xeons since Sapphire Rapids) oneDNN runs bf16 dot
products natively and mixed_bfloat16 trains at ~2x. XLA was 0.40x on CPU. So:

* ``decide(machine, precision, jit_compile)`` is a pure function of observed facts (CPU flags,
  CPU model, GPU compute capabilities) and the config; it returns the choice and the reason.
  GPUs: compute capability >= 8.0 (Ampere on) mixed_bfloat16 (native bf16 tensor cores, no loss
  scaling), 7.x mixed_float16 (fp16 tensor cores), older float32; XLA on. CPUs: amx_bf16 or
  avx512_bf16 -> mixed_bfloat16, an x86 CPU without them -> float32; XLA off.
* Where the rules cannot tell (a CPU announcing bf16 through a flag oneDNN may or may not use,
  e.g. ARM's ``bf16``), ``decide`` asks for a calibration: ``calibrate`` times a few training
  steps of a small CNN in both precisions (~2-4 s) and caches the ratio under the scratch cache,
  keyed by CPU model, flags and TensorFlow version, so a node pays for it once.

``observe()`` reads the facts (``/proc/cpuinfo``, TensorFlow's GPU details); everything else
here is pure and tested with both flag sets (tests/unit/test_precision.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# x86 flags (Linux /proc/cpuinfo names) whose presence means oneDNN runs bf16 dot products natively.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Flags that announce bf16 arithmetic whose speed under TensorFlow's kernels we cannot predict.
UNSURE_BF16_FLAGS = ("bf16",)  # aarch64 FEAT_BF16 (Graviton3, Neoverse V1/N2): depends on the build
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
        return "mixed_bfloat16", f"CPU has {'+'.join(native)} (native bf16 dot products)", False
    unsure = [f for f in UNSURE_BF16_FLAGS if f in machine.cpu_flags]
    if not unsure:
        return "float32", "CPU has no bf16 units (amx_bf16/avx512_bf16): bf16 would be emulated, ~0.14x", False
    if calibration is None:
        return "float32", f"CPU flag {unsure[0]} alone cannot tell; calibration needed", True
    if calibration >= CALIBRATION_WIN:
        return "mixed_bfloat16", f"calibrated: bf16 trains {calibration:.2f}x float32 on this CPU", False
    return "float32", f"calibrated: bf16 trains only {calibration:.2f}x float32 on this CPU", False


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
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bf16_over_float32": ratio, "cpu_model": machine.cpu_model,
                                   "tensorflow": tf_version, "measured_at": time.time()}))
        tmp.replace(path)
    except OSError as exc:  # a read-only scratch only costs the next run a new calibration
        log.warning("could not cache the precision calibration at %s: %s", path, exc)
    return ratio


def measure_bf16_ratio(steps: int = 6, image_size: int = 32, batch: int = 32) -> float:
    """Training steps/s of a small CNN in mixed_bfloat16 over float32 (same process, ~2-4 s)."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 255, (batch, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, (batch,)).astype("int32"))

    def rate(policy: str) -> float:
        layers = keras.layers
        model = keras.Sequential([
            keras.Input((image_size, image_size, 3)),
            layers.Rescaling(1 / 255, dtype=policy),
            layers.Conv2D(32, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(dtype=policy),
            layers.Conv2D(64, 3, activation="relu", dtype=policy),
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
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        step().numpy()
        return (steps + 1) / (time.perf_counter() - t0)

    return rate("mixed_bfloat16") / rate("float32")
