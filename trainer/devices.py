"""Devices: the distribution strategy and the per-device speed choices (precision, XLA).

``MirroredStrategy`` over every GPU of the pod (global batch = per-replica batch x replicas);
over N logical CPU devices when ``cpu_replicas`` asks for it (tests exercise the multi-replica
path without a GPU); the default strategy otherwise. Measured on a 2-core CPU (docs/benchmarks.md)
XLA is 2-3x slower and bfloat16 4-7x slower there, so ``auto`` turns both on only for GPUs.

Must be called before TensorFlow initializes its devices (before any op runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trainer.config import TrainConfig
from trainer.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    strategy: object  # tf.distribute.Strategy
    replicas: int
    device_kind: str  # "gpu" or "cpu"
    precision: str  # keras dtype policy name
    jit_compile: bool

    def describe(self) -> str:
        return (f"{type(self.strategy).__name__} with {self.replicas} replica(s) on {self.device_kind},"
                f" precision {self.precision}, XLA {'on' if self.jit_compile else 'off'}")


def _split_cpu(n: int) -> None:
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:  # already initialized (e.g. a second run in one process)
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise ConfigError(
                f"cpu_replicas={n} but TensorFlow already runs with {have} logical CPU devices;"
                " start a new process"
            ) from None


def make_runtime(cfg: TrainConfig) -> Runtime:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # share the GPU with the input pipeline instead of grabbing all memory
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    if cfg.cpu_replicas and not gpus:
        _split_cpu(cfg.cpu_replicas)

    if cfg.strategy == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif gpus and (len(gpus) > 1 or cfg.strategy == "mirrored"):
        strategy = tf.distribute.MirroredStrategy()
    elif cfg.cpu_replicas > 1 or (cfg.strategy == "mirrored" and not gpus):
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    else:
        strategy = tf.distribute.get_strategy()  # the default: one device, no wrapping cost

    kind = "gpu" if gpus else "cpu"
    precision = cfg.precision if cfg.precision != "auto" else ("mixed_float16" if gpus else "float32")
    jit = cfg.jit_compile == "on" or (cfg.jit_compile == "auto" and kind == "gpu")
    keras.mixed_precision.set_global_policy(precision)
    runtime = Runtime(strategy, strategy.num_replicas_in_sync, kind, precision, jit)
    log.info("devices: %s", runtime.describe())
    return runtime
