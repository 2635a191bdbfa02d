"""Batch-norm statistics that match the weights they normalize ("precise BN").

A ``BatchNormalization`` layer normalizes a training batch by that batch's statistics but an
inference batch by its moving averages, which start at mean 0, variance 1 and decay towards the
batches' statistics by ``momentum`` (0.9) per step. After a short run they are still wrong: in
3 epochs of 128 digits (36 steps) the stem's activations (pixels scaled to [0, 1]) have a
variance of ~0.01 while 0.9^36 = 2.3% of the initial 1.0 is left in the moving variance, 3.3x
too large; every later layer then sees other inputs than in training, and the model that trains
at 97% tests at 27-33% (measured; docs/benchmarks.md). The averages also describe the weights of
the last ~10 steps, not the final ones. Under ``MirroredStrategy`` Keras 3 creates them with no
aggregation, so each replica keeps its own (from its shard of each batch).

So before the test evaluation and the export, the trainer replaces them: it runs the model forward in training mode (batch norm on batch statistics, exactly as a
training step normalizes, with dropout off and no augmentation) over a fixed sample of the
training split in batches of the training batch size per replica, and sets every trainable
batch-norm layer's moving mean and variance to the means of its per-batch means and variances,
summed over all replicas of all workers. Every replica then holds the same statistics, computed
with the final weights, whatever the number of steps, replicas or workers. Frozen layers (a
pretrained backbone's) are left alone. The weights are untouched, so training and a resumed run
are unchanged.

A recomputation costs a forward pass over its sample (512 images: ~11% of an epoch of the
1,437 digits) and, once per run, tracing that pass (about half the training step's tracing,
measured), so it runs only where the moving averages can be wrong:

* a validation (its accuracy picks the epoch to export) needs no pass: while the moving averages
  still hold more than ``INITIAL_LEFT`` of their initial values (mean 0, variance 1; ``momentum
  ** steps``, the first 66 steps at 0.9), the failure measured above, ``debiased`` removes that
  share exactly for the validation (as Adam corrects its moments), then puts them back;
* before the test evaluation and the export (``final_recompute_needed``): while they hold their
  initial values, with more than one replica (each kept its own), when the exported epoch is not
  the last or the learning rate does not decay to zero (then the last ~10 steps' weights, which
  they average, are not the final ones). A long single-replica run on a decaying schedule (the
  ``make demo`` run: 230 steps, cosine to 0) needs none and pays nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from trainer.runtime import multiworker

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 512  # training images per recomputation before test and export (whole global batches)
INITIAL_LEFT = 1e-3  # validate on recomputed statistics while momentum ** steps is above this
SAMPLE_SEED_OFFSET = 7919  # the sample's shuffle seed is cfg.seed + this: not any epoch's order


def trainable_batch_norms(model) -> list:
    """The batch-norm layers whose statistics training changes, in a fixed order."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def _noise_switches(model) -> list[tuple[object, str]]:
    """(layer, attribute) pairs that, set to 0, turn the model's dropout and noise layers off."""
    import keras

    kinds = {keras.layers.Dropout: "rate", keras.layers.AlphaDropout: "rate",
             keras.layers.GaussianDropout: "rate", keras.layers.GaussianNoise: "stddev"}
    return [(layer, attr) for layer in model._flatten_layers(include_self=False)
            for kind, attr in kinds.items() if isinstance(layer, kind)]


def sample_plan(num_examples: int, per_replica_batch: int, replicas: int,
                sample_images: int = SAMPLE_IMAGES) -> tuple[int, int]:
    """(global batch, steps) of the sample: whole batches of the training batch size per replica
    (smaller when the split is smaller), at least 2 images per replica; (0, 0) = too few images."""
    per_replica = min(per_replica_batch, num_examples // max(1, replicas))
    if per_replica < 2:
        return 0, 0
    batch = per_replica * replicas
    steps = max(1, min(num_examples // batch, -(-sample_images // batch)))
    return batch, steps


def sample_batches(source, num_examples: int, cfg, batch: int, steps: int):
    """``steps`` whole batches of ``batch`` training images, shuffled once with a fixed seed (the
    same sample every epoch and on every worker), not augmented."""
    import tensorflow as tf

    seed = cfg.seed + SAMPLE_SEED_OFFSET
    if hasattr(source, "batches"):  # a packed stream: shuffled by shard, then in a buffer
        ds = source.batches(cfg, batch, training=True, epoch=SAMPLE_SEED_OFFSET).unbatch()
    else:
        ds = source.shuffle(num_examples, seed=seed, reshuffle_each_iteration=False)
    ds = ds.batch(batch, drop_remainder=True).take(steps)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


class BatchNormStats:
    """Recomputes the trainable batch-norm layers' statistics of one model under one strategy."""

    def __init__(self, model, strategy, jit_compile: bool = False):
        self.model = model
        self.strategy = strategy
        self.jit_compile = jit_compile
        self._layers: list = []
        self._collect = None

    def moving_averages_biased(self, steps: int) -> bool:
        """True while some trainable layer's moving averages keep > ``INITIAL_LEFT`` of their
        initial values after ``steps`` training steps."""
        layers = trainable_batch_norms(self.model)
        return bool(layers) and max(layer.momentum for layer in layers) ** steps > INITIAL_LEFT

    @contextlib.contextmanager
    def debiased(self, steps: int):
        """Within the block, each trainable layer's moving averages without their initial values'
        share ``momentum ** steps`` (mean 0, variance 1); restored on exit."""
        import keras

        layers = [layer for layer in trainable_batch_norms(self.model)
                  if layer.momentum ** steps > INITIAL_LEFT
                  and isinstance(layer.moving_mean_initializer, keras.initializers.Zeros)
                  and isinstance(layer.moving_variance_initializer, keras.initializers.Ones)]
        saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
        try:
            for layer, (mean, variance) in zip(layers, saved):
                left = layer.momentum ** steps
                layer.moving_mean.assign(mean / (1.0 - left))
                layer.moving_variance.assign(np.maximum((variance - left) / (1.0 - left), 0.0))
            yield
        finally:
            for layer, (mean, variance) in zip(layers, saved):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)

    def final_recompute_needed(self, steps: int, replicas: int, decays_to_zero: bool, last_epoch: bool) -> bool:
        """Whether the moving averages may not describe the weights to test and export."""
        if not trainable_batch_norms(self.model):
            return False
        return self.moving_averages_biased(steps) or replicas > 1 or not decays_to_zero or not last_epoch

    def _make_collect(self, layers: list):
        import tensorflow as tf

        model, strategy = self.model, self.strategy
        compute_dtype = model.compute_dtype

        def replica_step(images):
            # Traced with momentum 0 (see ``recompute``): each layer's moving statistics are
            # this replica's batch statistics once the forward pass ran; read them back.
            model(tf.cast(images, compute_dtype), training=True)
            n = tf.cast(tf.shape(images)[0], tf.float32)
            parts = [tf.reshape(n, [1])]
            for layer in layers:
                parts.append(tf.cast(tf.convert_to_tensor(layer.moving_mean), tf.float32) * n)
                parts.append(tf.cast(tf.convert_to_tensor(layer.moving_variance), tf.float32) * n)
            return tf.concat(parts, 0)

        replica_step = tf.autograph.experimental.do_not_convert(replica_step)
        if self.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def collect(iterator, steps):
            totals = tf.zeros([1 + 2 * sum(int(np.prod(layer.moving_mean.shape)) for layer in layers)])
            for _ in tf.range(steps):
                images, _ = next(iterator)
                totals += strategy.reduce("SUM", strategy.run(replica_step, args=(images,)), axis=None)
            return totals

        return collect

    def recompute(self, batches, steps: int) -> int:
        """Set the statistics from ``steps`` batches of ``batches``; returns the images used
        (0: no trainable batch norm, or no sample). Every worker must call it alike."""
        import tensorflow as tf

        layers = trainable_batch_norms(self.model)
        if not layers or steps <= 0:
            return 0
        if [id(x) for x in layers] != [id(x) for x in self._layers]:  # first call, or a new phase
            self._layers, self._collect = layers, self._make_collect(layers)
        started = time.monotonic()
        switches = [(layer, "momentum") for layer in layers] + _noise_switches(self.model)
        saved = [(layer, attr, getattr(layer, attr)) for layer, attr in switches]
        try:
            for layer, attr, _ in saved:  # read when the function is traced (first call only)
                setattr(layer, attr, 0.0)
            iterator = iter(self.strategy.experimental_distribute_dataset(batches))
            with multiworker.graph_call("batch-norm statistics"):
                totals = self._collect(iterator, tf.constant(steps, tf.int32)).numpy()
        finally:
            for layer, attr, value in saved:
                setattr(layer, attr, value)
        count, offset = totals[0], 1
        if count <= 0:
            return 0
        for layer in layers:
            size = int(np.prod(layer.moving_mean.shape))
            mean = totals[offset:offset + size] / count
            variance = totals[offset + size:offset + 2 * size] / count
            offset += 2 * size
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(mean.reshape(shape))  # cross-replica context: every replica
            layer.moving_variance.assign(variance.reshape(shape))
        log.debug("batch-norm statistics of %d layers from %d training images in %.2fs",
                  len(layers), int(count), time.monotonic() - started)
        return int(count)
