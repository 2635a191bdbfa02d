"""The training loop: a custom step run with ``strategy.run``.

Not ``model.fit``: under ``MultiWorkerMirroredStrategy`` Keras 3's ``fit`` fails (keras#20585)
while a ``strategy.run`` step on the same model trains in sync, so this loop runs unchanged
under the default strategy, ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``
(``trainer.runtime.multiworker``). It also owns what
``fit`` cannot give us: a checkpoint at any step boundary when SIGTERM arrives, and a resume
that continues mid-epoch on the same batches.

Per call into the compiled graph the loop runs ``steps_per_execution`` steps, reducing the
loss sum, correct count and example count across replicas; Python sees one small tensor per
call, so the host never stalls the devices. The same reduction carries each worker's "SIGTERM
arrived" flag, so with several workers all of them stop at the same step and worker 0 saves
one consistent checkpoint. Evaluation runs on every replica too (``trainer.training.evaluation``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from trainer.config import TrainConfig
from trainer.config.auto import pretrained
from trainer.core.errors import Diverged, PeerLost, Preempted
from trainer.core.preemption import StopRequest
from trainer.data import dataset as data_lib
from trainer.data import pipeline
from trainer.model import schedule
from trainer.model.build import build_model
from trainer.model.optimizer import make_optimizer, per_example_loss
from trainer.model.weights import InitialWeights
from trainer.runtime import multiworker
from trainer.runtime.devices import Runtime
from trainer.training.batchnorm import BatchNormStats, sample_batches, sample_plan
from trainer.training.best import BestWeights
from trainer.training.checkpoint import Checkpointer, Position
from trainer.training.evaluation import Evaluator, eval_global_batch, examples, padded_batches
from trainer.training.observer import NullObserver
from trainer.training.pacing import MULTI_WORKER_STEPS, Pacer

log = logging.getLogger(__name__)

SHARED_EVAL_TRACE_MAX_PROBS = 1_000_000  # 4 MB of float32 probabilities per evaluation


@dataclass
class FitResult:
    model: object
    history: dict[str, list[float]]
    epochs_completed: int
    resumed_from: tuple[int, int] | None
    train_seconds: float
    images_per_second: float  # median over epochs after the first (tracing) epoch
    selected_epoch: int = 0  # 1-based epoch whose weights the model holds (export_epoch)
    selection: str = ""  # why that epoch


class _TerminalBar:
    """A progress bar on a terminal, nothing otherwise (the per-epoch line is always logged)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def update(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(1, total))
        sys.stderr.write(f"\repoch {epoch}/{epochs} [{'=' * filled}{'.' * (width - filled)}]"
                         f" {done}/{total} loss {loss:.4f}")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class Trainer:
    """Builds the model under the strategy and runs epochs; evaluation helpers for the report."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime, dataset: data_lib.Dataset, cache_dir=None,
                 init_weights: InitialWeights | None = None):
        """``init_weights``: what ``trainer.model.weights.resolve`` found (a local file); needed
        when ``cfg`` starts from trained weights, since a Trainer does no I/O of its own."""
        import keras  # lazy, like every TensorFlow import: `jobs` and --help stay light

        if init_weights is None:
            if pretrained(cfg):
                raise ValueError(f"weights={cfg.weights!r} for {cfg.model}: pass init_weights="
                                 "trainer.model.weights.resolve(cfg, scratch)")
            init_weights = InitialWeights("none")
        self.init_weights = init_weights

        self.cfg = cfg
        self.runtime = runtime
        self.dataset = dataset
        self.global_batch = cfg.batch_size * runtime.replicas
        self.steps_per_epoch = pipeline.steps_per_epoch(dataset.train, self.global_batch)
        self.sources = {
            name: pipeline.make_source(getattr(dataset, name), cfg, cache_dir)
            for name in ("train", "val", "test")
        }
        strategy = runtime.strategy
        keras.utils.set_random_seed(cfg.seed)  # same initial weights for the same seed
        with strategy.scope():
            self.model = build_model(cfg.model, cfg.image_size, dataset.num_classes, init_weights.path)
            self.phases = schedule.plan(cfg, schedule.find_backbone(self.model) is not None)
            self.optimizer = make_optimizer(cfg, schedule.learning_rate(cfg, self.phases, self.steps_per_epoch))
            # built for every variable any phase trains: its state is the same in every phase
            self.optimizer.build(schedule.optimizer_variables(self.model, self.phases))
        self.phase = None  # set per epoch by _enter_phase
        self.loss_fn = per_example_loss(cfg, dataset.num_classes)
        self._train_chunk = self._make_train_chunk()
        self._evaluator = Evaluator(self.model, self.loss_fn, strategy, runtime.jit_compile)
        self._bn_stats = BatchNormStats(self.model, strategy, runtime.jit_compile)
        # Steps per call; 0 = sized from the step time, per process: workers must agree on every
        # call's size, so a multi-worker run uses a fixed one.
        spe = cfg.steps_per_execution or (MULTI_WORKER_STEPS if runtime.workers > 1 else 0)
        self.pacer = Pacer(spe)

    # -- compiled pieces ------------------------------------------------------------------------

    def _make_train_chunk(self):
        import tensorflow as tf

        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        strategy, global_batch = self.runtime.strategy, float(self.global_batch)
        compute_dtype = model.compute_dtype

        def step(images, labels, stop_flag):
            images = tf.cast(images, compute_dtype)
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                per_example = tf.cast(loss_fn(labels, probs), tf.float32)
                loss = tf.reduce_sum(per_example) / global_batch
                if model.losses:
                    loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32))
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            return tf.stack([tf.reduce_sum(per_example), correct, count, stop_flag])

        # Not converted by AutoGraph (plain Python control flow only, as in Keras' own steps):
        # converting it would convert every layer's call while tracing, ~0.5 s of the first step.
        step = tf.autograph.experimental.do_not_convert(step)
        step = tf.function(step, jit_compile=self.runtime.jit_compile) if self.runtime.jit_compile else step

        @tf.function
        def train_chunk(iterator, num_steps, stop_flag):
            # totals: loss sum, correct, count, and how many replicas' workers are stopping
            totals = tf.zeros([4], tf.float32)
            for _ in tf.range(num_steps):
                images, labels = next(iterator)
                per_replica = strategy.run(step, args=(images, labels, stop_flag))
                totals += strategy.reduce("SUM", per_replica, axis=None)
            return totals

        return train_chunk

    # -- epochs ---------------------------------------------------------------------------------

    def evaluate(self, split: str, collect: bool = False):
        """Mean loss and accuracy over a split, exact, on every replica of every worker.

        With ``collect``, also the labels and probabilities of the whole split (in the split's
        order) and its first 64 images for the predictions grid.
        """
        global_batch = eval_global_batch(self.cfg.batch_size, self.runtime.replicas)
        source = examples(self.sources[split], self.cfg.image_size)
        batches, steps = padded_batches(source, len(getattr(self.dataset, split)), global_batch)
        # One traced evaluation function for val and test, unless gathering a large split's
        # probabilities each epoch would cost more than tracing a second function (~0.3 s).
        gather = len(getattr(self.dataset, split)) * self.dataset.num_classes <= SHARED_EVAL_TRACE_MAX_PROBS
        out = self._evaluator.run(batches, steps, collect, gather)
        if collect:
            first = [x for x, _ in source.take(64).batch(64)]
            out["images"] = first[0].numpy() if first else np.zeros((0,))
        return out

    def recompute_batch_norm(self) -> int:
        """Batch-norm statistics of the current weights (``trainer.training.batchnorm``); images used."""
        n = len(self.dataset.train)
        batch, steps = sample_plan(n, self.cfg.batch_size, self.runtime.replicas)
        if not steps:
            return 0
        batches = sample_batches(self.sources["train"], n, self.cfg, batch, steps)
        if self.runtime.workers > 1:
            batches = multiworker.shard_by_data(batches)
        return self._bn_stats.recompute(batches, steps)

    def eval_batches(self, split: str):
        """A split's batches for evaluation: in order, not augmented."""
        return pipeline.make_batches(self.sources[split], len(getattr(self.dataset, split)), self.cfg,
                                     max(self.global_batch, 256), training=False)

    def _current_lr(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)

    def _enter_phase(self, epoch: int) -> None:
        """Set the epoch's trainable layers; a new phase retraces the step for its variables."""
        phase = schedule.phase_of(self.phases, epoch)
        if phase == self.phase:
            return
        schedule.set_trainable(self.model, phase)
        self._train_chunk = self._make_train_chunk()
        self.phase = phase
        trainable, total = schedule.trainable_summary(self.model)
        log.info("%s (%d of %d parameters train)", phase.describe(), trainable, total)

    # Over 60 lines: the epoch loop's resume position, stop checks and chunk pacing share state;
    # split apart (not done in #14: no time to test it) they would need a mutable loop object.
    def _images_done(self, pos) -> int:
        """Images of epoch ``pos.epoch`` already trained: the checkpoint's running count, which
        holds whatever the global batch was (another number of workers or replicas resumes the
        epoch at the same image); a marker without it, ``pos.step`` batches of this run's."""
        count = pos.partial.get("count") if pos.step else 0
        done = pos.step * self.global_batch
        if isinstance(count, (int, float)) and math.isfinite(count) and count >= 0:
            done = round(count)
        done = min(done, len(self.dataset.train))
        if done and done != pos.step * self.global_batch:
            log.info("resuming epoch %d at image %d of %d: its checkpoint was saved at another global "
                     "batch (%d steps of it); this run's is %d (%d x %d replicas)", pos.epoch + 1, done,
                     len(self.dataset.train), pos.step, self.global_batch, self.cfg.batch_size,
                     self.runtime.replicas)
        return done

    def fit(self, checkpointer: Checkpointer, stop: StopRequest, observer=None) -> FitResult:
        """Train the remaining epochs. ``observer`` (``trainer.training.observer``) gets a call per
        chunk and per epoch: progress record and TensorBoard events."""
        import tensorflow as tf

        cfg, strategy = self.cfg, self.runtime.strategy
        observer = observer or NullObserver()
        pos = checkpointer.restore() or Position()
        resumed_from = (pos.epoch, pos.step) if (pos.epoch or pos.step) else None
        history = {k: list(v) for k, v in pos.history.items()}
        bar = _TerminalBar(sys.stderr.isatty())
        best = BestWeights(checkpointer.run_dir, self.model, checkpointer.is_chief)
        start = time.monotonic()
        if pos.epoch >= cfg.epochs:
            log.info("all %d epochs already trained; evaluating", cfg.epochs)

        for epoch in range(pos.epoch, cfg.epochs):
            done = self._images_done(pos) if epoch == pos.epoch else 0
            # The steps left at this run's global batch; those before count as done.
            skip = self.steps_per_epoch - -(-(len(self.dataset.train) - done) // self.global_batch)
            self._enter_phase(epoch)
            totals = np.array([pos.partial.get(k, 0.0) for k in ("loss_sum", "correct", "count")]
                              if done else [0.0, 0.0, 0.0])
            batches = pipeline.make_batches(
                self.sources["train"], len(self.dataset.train), cfg, self.global_batch,
                training=True, epoch=epoch, skip_examples=done,
            )
            if self.runtime.workers > 1:
                batches = multiworker.shard_by_data(batches)
            iterator = iter(strategy.experimental_distribute_dataset(batches))
            t0, step = time.monotonic(), skip
            trained_images = 0.0
            while step < self.steps_per_epoch:
                n = self.pacer.next_steps(self.steps_per_epoch - step)
                called = time.monotonic()
                with multiworker.graph_call(f"training step {step + 1} of epoch {epoch + 1}"):
                    chunk = self._train_chunk(iterator, tf.constant(n, tf.int32),
                                              tf.constant(1.0 if stop else 0.0)).numpy()
                self.pacer.record(n, time.monotonic() - called)
                chunk, stopping = chunk[:3], chunk[3] > 0
                totals += chunk
                trained_images += chunk[2]
                step += n
                if not math.isfinite(chunk[0]):
                    raise Diverged(f"loss became {chunk[0]} in epoch {epoch + 1}, step {step}; "
                                   "lower the learning rate")
                bar.update(epoch + 1, cfg.epochs, step, self.steps_per_epoch, totals[0] / max(1, totals[2]))
                observer.chunk(epoch, step, n, chunk)
                if self.runtime.workers == 1:
                    stopping = bool(stop)
                if stopping and step < self.steps_per_epoch:
                    bar.clear()
                    partial = dict(zip(("loss_sum", "correct", "count"), map(float, totals)))
                    name = checkpointer.save(Position(epoch, step, history, partial))
                    where = f"at epoch {epoch + 1}, step {step}/{self.steps_per_epoch}"
                    if self.runtime.workers > 1:
                        with multiworker.graph_call("stopping together"):
                            multiworker.barrier(strategy)  # everyone leaves after the save
                        if not stop:
                            raise PeerLost(f"another worker was stopped (SIGTERM); worker 0 saved "
                                           f"checkpoint {name} {where}; all workers restart")
                    raise Preempted(f"{stop.reason}: saved checkpoint {name} {where}; "
                                    "restart with the same --output to resume")
            bar.clear()
            seconds = time.monotonic() - t0
            with self._bn_stats.debiased(int(self.optimizer.iterations.numpy())):
                val = self.evaluate("val")  # it picks the epoch to export
            row = {
                "loss": totals[0] / max(1, totals[2]),
                "accuracy": totals[1] / max(1, totals[2]),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "learning_rate": self._current_lr(),
                "epoch_seconds": seconds,
                "images_per_second": trained_images / max(seconds, 1e-9),
            }
            for key, value in row.items():
                history.setdefault(key, []).append(float(value))
            best.after_epoch(epoch, history)
            checkpointer.save(Position(epoch + 1, 0, history, {}))
            observer.epoch(epoch + 1, row)
            log.info(
                "epoch %d/%d - %.1fs - %.0f img/s - loss %.4f - accuracy %.4f - val_loss %.4f - val_accuracy %.4f",
                epoch + 1, cfg.epochs, seconds, row["images_per_second"], row["loss"], row["accuracy"],
                row["val_loss"], row["val_accuracy"],
            )
            if stop:
                raise Preempted(f"{stop.reason}: saved checkpoint after epoch {epoch + 1}; "
                                "restart with the same --output to resume")

        selected_epoch, selection = best.select(history, cfg.export_epoch)
        if self._bn_stats.final_recompute_needed(int(self.optimizer.iterations.numpy()), self.runtime.replicas,
                                                 cfg.lr_schedule != "constant",
                                                 selected_epoch == len(history.get("loss", []))):
            self.recompute_batch_norm()  # the weights that are tested and exported
        speeds = history.get("images_per_second", [])
        steady = speeds[1:] if len(speeds) > 1 else speeds
        return FitResult(
            model=self.model,
            history=history,
            epochs_completed=len(history.get("loss", [])),
            resumed_from=resumed_from,
            train_seconds=time.monotonic() - start,
            images_per_second=float(np.median(steady)) if steady else 0.0,
            selected_epoch=selected_epoch,
            selection=selection,
        )
