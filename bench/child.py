"""One measured run, in a fresh process: ``python -m bench.child '<json spec>'``.

Prints one line ``BENCH_RESULT {json}`` on stdout. Kinds:

* ``matmul``: float32 matrix multiply in TensorFlow, GFLOP/s (the machine's practical peak);
* ``tutorial``: the tutorial's script (bench/tutorial.py), ``model.fit`` on NumPy arrays;
* ``trainer``: the trainer's real loop (``trainer.training.loop.Trainer.fit`` with a real checkpointer);
* ``pipeline``: the trainer's step fed by its real ``tf.data`` pipeline vs by the same batches
  already in memory, alternating epoch by epoch in one process.

Every training kind records, per epoch, the wall and CPU seconds of the training steps only
(validation and the test probe excluded) and, when asked for a target accuracy, the wall time
at which the test accuracy first reached it (the probe's own time subtracted).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _threads(spec: dict) -> None:
    import tensorflow as tf

    t = spec.get("threads") or {}
    if t.get("intra"):
        tf.config.threading.set_intra_op_parallelism_threads(t["intra"])
    if t.get("inter"):
        tf.config.threading.set_inter_op_parallelism_threads(t["inter"])


class Clock:
    """Per-epoch wall and CPU seconds of the training steps, and the time-to-target probe."""

    def __init__(self, target: float | None):
        self.target = target
        self.epochs: list[dict] = []
        self.test_accuracy: list[float] = []
        self.probe_seconds = 0.0
        self.reached_epoch = None
        self.reached_at = None  # time.time() when the target was first seen, probe time removed
        self._start = None
        self._last = None

    def begin(self) -> None:
        self._start = (time.perf_counter(), time.process_time())
        self._last = self._start
        self._first = None

    def first_call(self) -> None:  # before the epoch's first call into the training graph
        if self._first is None:
            self._first = time.perf_counter()

    def tick(self) -> None:  # after each call into the training graph
        self._last = (time.perf_counter(), time.process_time())

    def end(self, images: int) -> None:
        self.epochs.append({"seconds": self._last[0] - self._start[0],
                            "cpu_seconds": self._last[1] - self._start[1], "images": int(images),
                            "setup_seconds": (self._first or self._start[0]) - self._start[0]})

    def probe(self, accuracy_fn) -> bool:
        """Measure test accuracy; True when the target is reached (now or before)."""
        if self.target is None:
            return False
        t = time.time()
        acc = float(accuracy_fn())
        self.test_accuracy.append(acc)
        if self.reached_at is None and acc >= self.target:
            self.reached_at = t - self.probe_seconds
            self.reached_epoch = len(self.test_accuracy)
        self.probe_seconds += time.time() - t
        return self.reached_at is not None

    def result(self) -> dict:
        return {"epochs": self.epochs, "test_accuracy": self.test_accuracy,
                "reached_epoch": self.reached_epoch, "reached_at": self.reached_at}


def run_matmul(spec: dict) -> dict:
    import tensorflow as tf

    _threads(spec)
    n = spec.get("n", 2048)
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    tf.matmul(a, b).numpy()  # warm up
    rates = []
    deadline = time.perf_counter() + spec.get("seconds", 3.0)
    while time.perf_counter() < deadline or len(rates) < 3:
        t0 = time.perf_counter()
        tf.matmul(a, b).numpy()
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    rates.sort()
    return {"gflops_best": rates[-1], "gflops_median": rates[len(rates) // 2], "repeats": len(rates)}


def run_tutorial(spec: dict) -> dict:
    import keras

    from bench import common, tutorial

    _threads(spec)
    keras.utils.set_random_seed(spec.get("seed", 0))
    ds = common.digits(spec.get("image_size", 64), spec.get("train_limit", 0))
    # The tutorial's preprocessing: float arrays normalized to [0, 1], held in memory.
    x_train = ds.train.images.astype("float32") / 255.0
    x_val = ds.val.images.astype("float32") / 255.0
    x_test = ds.test.images.astype("float32") / 255.0
    y_train, y_val, y_test = ds.train.labels, ds.val.labels, ds.test.labels
    clock = Clock(spec.get("target"))

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            clock.begin()
            self.in_train = True

        # No batch-end hooks: overriding one makes Keras turn every step's logs into Python
        # floats on the main thread (a device sync per step), which would slow the baseline.
        # A batch-begin hook costs nothing (no logs yet); it times the epoch's setup.
        def on_train_batch_begin(self, batch, logs=None):
            clock.first_call()

        def on_test_begin(self, logs=None):  # validation starts: the epoch's training is done
            if self.in_train:
                clock.tick()
                clock.end(len(x_train))
                self.in_train = False

        def on_epoch_end(self, epoch, logs=None):
            def accuracy():
                probs = self.model.predict(x_test, batch_size=256, verbose=0)
                return (probs.argmax(-1) == y_test).mean()
            if clock.probe(accuracy):
                self.model.stop_training = True

    model, _ = tutorial.train(x_train, y_train, x_val, y_val, epochs=spec["epochs"], callbacks=[Timer()],
                              batch_size=spec.get("batch_size", 32))
    final = float((model.predict(x_test, batch_size=256, verbose=0).argmax(-1) == y_test).mean())
    return dict(clock.result(), final_test_accuracy=final)


SEED_BASE = 1337  # the config's default seed: round 0 trains exactly what the defaults do


def _trainer_setup(spec: dict):
    import keras

    from trainer.config import load_config
    from trainer.data import dataset as data_lib
    from trainer.data import pipeline
    from trainer.runtime.devices import make_runtime

    out = tempfile.mkdtemp(prefix="kubetrain-bench-")
    overrides = {"data": "builtin:digits", "output": out, "epochs": spec["epochs"], **spec.get("overrides", {})}
    if spec.get("seed_per_round"):  # a new split, initialization and shuffle each round
        overrides["seed"] = SEED_BASE + spec.get("seed", 0)
    cfg = load_config(overrides=overrides)
    _threads(spec)
    if spec.get("tf_data_autotune"):  # what make_batches did before it turned autotuning off
        import tensorflow as tf

        real_make_batches = pipeline.make_batches

        def make_batches(*args, **kwargs):
            options = tf.data.Options()
            options.autotune.enabled = True
            return real_make_batches(*args, **kwargs).with_options(options)

        pipeline.make_batches = make_batches
    runtime = make_runtime(cfg)
    keras.utils.set_random_seed(spec.get("seed", 0))
    ds = data_lib.load_dataset(cfg, None)
    limit = spec.get("train_limit", 0)
    if limit and limit < len(ds.train):
        train = data_lib.Split(labels=ds.train.labels[:limit], images=ds.train.images[:limit])
        ds = data_lib.Dataset(ds.class_names, train, ds.val, ds.test, ds.description)
    return cfg, runtime, ds, out


def run_trainer(spec: dict) -> dict:
    from trainer.core.errors import Preempted
    from trainer.core.preemption import StopRequest
    from trainer.data import pipeline
    from trainer.storage import LocalRunDir
    from trainer.training.checkpoint import Checkpointer
    from trainer.training.loop import Trainer

    cfg, runtime, ds, out = _trainer_setup(spec)
    clock = Clock(spec.get("target"))

    # Hooks around the real loop, no change to it: an epoch starts when fit() asks for its
    # training batches, each call into the graph ticks the clock, and the epoch-boundary
    # checkpoint closes the epoch and runs the test probe.
    real_make_batches = pipeline.make_batches

    def make_batches(*args, training, **kwargs):
        if training:
            clock.begin()
        return real_make_batches(*args, training=training, **kwargs)

    pipeline.make_batches = make_batches
    trainer = Trainer(cfg, runtime, ds, cache_dir=None)
    real_make_chunk = trainer._make_train_chunk

    def make_chunk():  # fit() builds the step again at each phase (head, fine-tune) it enters
        real_chunk = real_make_chunk()

        def chunk(iterator, num_steps, *args):
            clock.first_call()
            result = real_chunk(iterator, num_steps, *args)
            clock.tick()
            return result

        return chunk

    trainer._make_train_chunk = make_chunk
    trainer._train_chunk = make_chunk()
    stop = StopRequest()

    class ProbingCheckpointer:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):  # run_dir, is_chief, ...: the real checkpointer's
            return getattr(self.inner, name)

        def restore(self):
            return self.inner.restore()

        def save(self, pos):
            boundary = pos.step == 0 and pos.epoch > 0
            if boundary:
                clock.end(len(ds.train))
            name = self.inner.save(pos)
            if boundary and clock.probe(lambda: trainer.evaluate("test")["accuracy"]):
                stop.set("target reached")
            return name

    run_dir = LocalRunDir(out)
    checkpointer = ProbingCheckpointer(
        Checkpointer(run_dir, trainer.model, trainer.optimizer, cfg.keep_checkpoints))
    try:
        fit = trainer.fit(checkpointer, stop)
        history = fit.history
    except Preempted:  # our own stop request: target reached
        history = {}
    result = clock.result()
    result["final_test_accuracy"] = trainer.evaluate("test")["accuracy"]
    result["trainer_images_per_second"] = history.get("images_per_second", [])
    result["runtime"] = runtime.describe()
    return result


def run_pipeline(spec: dict) -> dict:
    import tensorflow as tf

    from trainer.data import pipeline
    from trainer.training.loop import Trainer

    cfg, runtime, ds, _ = _trainer_setup(spec)
    trainer = Trainer(cfg, runtime, ds, cache_dir=None)
    strategy = runtime.strategy

    def epoch(batches) -> dict:
        # The inner loop of Trainer.fit, fed either by the real pipeline or by cached batches.
        t0, c0 = time.perf_counter(), time.process_time()
        iterator = iter(strategy.experimental_distribute_dataset(batches()))
        step = 0
        while step < trainer.steps_per_epoch:
            n = trainer.pacer.next_steps(trainer.steps_per_epoch - step)
            called = time.perf_counter()
            trainer._train_chunk(iterator, tf.constant(n, tf.int32), tf.constant(0.0)).numpy()
            trainer.pacer.record(n, time.perf_counter() - called)
            step += n
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "images": len(ds.train)}

    counter = iter(range(10**6))

    def real():
        return pipeline.make_batches(trainer.sources["train"], len(ds.train), cfg, trainer.global_batch,
                                     training=True, epoch=next(counter))

    cached = real().cache()
    for _ in cached:  # fill the cache: the same batches, already in memory
        pass

    def in_memory():
        return cached.prefetch(tf.data.AUTOTUNE)

    epoch(real), epoch(in_memory)  # tracing, excluded
    pairs = []
    for i in range(spec.get("pairs", 5)):
        first, second = (real, in_memory) if i % 2 == 0 else (in_memory, real)
        a, b = epoch(first), epoch(second)
        pairs.append({"pipeline": a if first is real else b, "in_memory": b if first is real else a})
    return {"pairs": pairs, "runtime": runtime.describe()}


KINDS = {"matmul": run_matmul, "tutorial": run_tutorial, "trainer": run_trainer, "pipeline": run_pipeline}


def main() -> int:
    spec = json.loads(sys.argv[1])
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = KINDS[spec["kind"]](spec)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["finished_at"] = time.time()
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
