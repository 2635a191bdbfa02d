"""Devices: the distribution strategy and the per-device speed choices (precision, XLA).

``MirroredStrategy`` over every GPU of the pod (global batch = per-replica batch x replicas);
over N logical CPU devices when ``cpu_replicas`` asks for it (tests exercise the multi-replica
path without a GPU); ``OneDeviceStrategy`` on a single GPU, so that batches are prefetched onto
the device while the previous steps run (``MirroredStrategy`` does the same per replica); the
default strategy on a CPU (no copy to make, no wrapping cost). With more than one worker
(``cluster``, see ``trainer.runtime.multiworker``) it is ``MultiWorkerMirroredStrategy``: every local GPU
of every worker is a replica (one CPU device per worker without GPUs). Precision and XLA follow
what the machine has (``trainer.runtime.precision``: bf16 on CPUs with bf16 units, mixed precision by
GPU compute capability), and the choice is logged with its reason.

Must be called before TensorFlow initializes its devices (before any op runs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.config import TrainConfig, multi_worker_problem
from trainer.core.errors import ConfigError
from trainer.runtime import multiworker
from trainer.runtime import precision as prec

PRECISION_CACHE_ENV = "KUBETRAIN_PRECISION_CACHE"  # a directory: one calibration shared by runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    strategy: object  # tf.distribute.Strategy
    replicas: int
    device_kind: str  # "gpu" or "cpu"
    precision: str  # keras dtype policy name
    jit_compile: bool
    reason: str = ""  # why this precision and XLA setting (trainer.runtime.precision.decide)
    workers: int = 1  # processes (pods) training in sync
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes the run directory; the others write nowhere shared."""
        return self.worker_index == 0

    def describe(self) -> str:
        where = f" across {self.workers} workers" if self.workers > 1 else ""
        return (f"{type(self.strategy).__name__} with {self.replicas} replica(s){where} on {self.device_kind},"
                f" precision {self.precision}, XLA {'on' if self.jit_compile else 'off'}")


# Optional integrations Keras imports eagerly when installed (``try: import X except
# ImportError``): matplotlib for its image-gallery helpers, scikit-learn (and with it
# scipy.stats) for its estimator wrappers. Measured on this machine: TensorFlow + Keras import
# in 3.1 s, 2.2 s without them.
HIDDEN_DURING_IMPORT = ("matplotlib", "sklearn")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras without the optional integrations Keras loads at import time.

    The trainer never calls Keras' plotting or scikit-learn wrappers, and the report (the one
    user of matplotlib and scikit-learn) is drawn in its own process (``trainer.report.worker``).
    Hiding them for the duration of the import saves ~0.9 s of every run's start-up; afterwards
    they import normally for whoever needs them (Keras' wrappers stay disabled in this process).
    """
    import sys

    if "keras" in sys.modules or any(name in sys.modules for name in HIDDEN_DURING_IMPORT):
        return
    for name in HIDDEN_DURING_IMPORT:
        sys.modules[name] = None  # makes "import name..." raise ImportError
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        for name in HIDDEN_DURING_IMPORT:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


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


def choose_precision(cfg: TrainConfig, gpus: list, cache_dir: Path | None, strategy=None, workers: int = 1):
    """``trainer.runtime.precision.decide`` on this machine's facts, calibrating (cached) if it asks to.

    With several workers, the calibrated ratio is averaged over them (an all-reduce), so every
    worker trains in the same precision even when their measurements differ."""

    machine = prec.observe(gpus)
    choice = prec.decide(machine, cfg.precision, cfg.jit_compile)
    if choice.calibrate:
        import tensorflow as tf

        log.info("devices: %s; timing bf16 against float32 once for this CPU", choice.reason)
        # $KUBETRAIN_PRECISION_CACHE: one calibration for every run that shares it (a node's
        # persistent volume; the test suite), so runs of one recipe agree on the precision even
        # when a busy machine would measure a ratio on the other side of the bar.
        cache_dir = Path(os.environ[PRECISION_CACHE_ENV]) if os.environ.get(PRECISION_CACHE_ENV) else cache_dir
        if cache_dir is None:
            ratio = prec.measure_bf16_ratio()
        else:
            ratio = prec.cached_calibration(cache_dir, machine, tf.__version__, prec.measure_bf16_ratio)
        if workers > 1:
            mine = tf.constant(ratio, tf.float32)
            ratio = float(strategy.reduce("MEAN", strategy.run(lambda: mine), axis=None).numpy())
            if cache_dir is not None:  # the ratio the run decided on, for the next run to agree
                prec.store_calibration(cache_dir, machine, tf.__version__, ratio)
        choice = prec.decide(machine, cfg.precision, cfg.jit_compile, calibration=ratio)
    return choice


def make_runtime(cfg: TrainConfig, cache_dir: Path | None = None, cluster=None) -> Runtime:
    """The strategy and speed choices; ``cluster`` (a ``workers.Cluster``) means MWMS."""
    import_tensorflow()
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # share the GPU with the input pipeline instead of grabbing all memory
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    workers, index = 1, 0
    if cluster is not None:
        problem = multi_worker_problem(cfg)
        if problem:
            raise ConfigError(problem)

        workers, index = cluster.num_workers, cluster.index
    elif cfg.cpu_replicas and not gpus:
        _split_cpu(cfg.cpu_replicas)

    if cluster is not None:  # first: MWMS must exist before any other TensorFlow op
        strategy = multiworker.make_strategy(cluster, cfg.rendezvous_timeout_seconds,
                                             cfg.collective_timeout_seconds)
    elif cfg.strategy == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif gpus and (len(gpus) > 1 or cfg.strategy == "mirrored"):
        strategy = tf.distribute.MirroredStrategy()
    elif cfg.cpu_replicas > 1 or (cfg.strategy == "mirrored" and not gpus):
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    elif gpus:  # one GPU: its distributed dataset prefetches the next batches onto the GPU
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    else:
        strategy = tf.distribute.get_strategy()  # the default: one device, no wrapping cost

    kind = "gpu" if gpus else "cpu"
    choice = choose_precision(cfg, gpus, cache_dir, strategy, workers)
    keras.mixed_precision.set_global_policy(choice.precision)
    runtime = Runtime(strategy, strategy.num_replicas_in_sync, kind, choice.precision,
                      choice.jit_compile, choice.reason, workers, index)
    log.info("devices: %s (%s)", runtime.describe(), runtime.reason)
    return runtime
