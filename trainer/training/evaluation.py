"""Evaluation spread over every replica (and every worker), exact over the split.

A split is padded to a whole number of global batches with examples of weight 0, so every
replica gets a full batch each step (no empty or ragged batch, the same number of steps on
every worker) and every real example counts exactly once. Each step runs the model with
``strategy.run``, sums (loss, correct, count) over the replicas and, when the report needs
them, gathers the per-example probabilities and labels, so worker 0 sees the whole split.
The same code runs under the default strategy, ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` (where every worker must take part in every step).
"""

from __future__ import annotations

import math

import numpy as np

from trainer.data.packed import decode_record
from trainer.runtime import multiworker

EVAL_BATCH = 256  # at least this many images per step (global), for throughput


def eval_global_batch(per_replica_batch: int, replicas: int) -> int:
    """A multiple of ``replicas`` that is at least the training batch and ``EVAL_BATCH``."""
    per_replica = max(per_replica_batch, math.ceil(EVAL_BATCH / replicas))
    return per_replica * replicas


def examples(source, image_size: int):
    """Unbatched ``(image, label)`` examples of a split's source, in order (packed or not)."""
    if hasattr(source, "records"):  # a packed stream (trainer.data.packed.PackedSource)
        import tensorflow as tf


        return source.records(0, training=False).map(
            decode_record(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return source


def padded_batches(source, num_examples: int, global_batch: int):
    """``(images, labels, weights)`` batches over ``source`` padded with weight-0 examples.

    Returns (dataset, steps). The padding repeats forever and ``take`` cuts it, so the step
    count is exact even if a streamed source yields fewer examples than expected.
    """
    import tensorflow as tf

    steps = max(1, -(-num_examples // global_batch))
    image_spec, label_spec = source.element_spec
    real = source.map(lambda x, y: (x, y, tf.constant(1.0, tf.float32)))
    pad = tf.data.Dataset.from_tensors(
        (tf.zeros(image_spec.shape, image_spec.dtype), tf.zeros(label_spec.shape, label_spec.dtype),
         tf.constant(0.0, tf.float32))
    ).repeat()
    ds = real.concatenate(pad).take(steps * global_batch).batch(global_batch, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options), steps


class Evaluator:
    """Compiled evaluation steps for one model under one strategy."""

    def __init__(self, model, loss_fn, strategy, jit_compile: bool):
        import tensorflow as tf

        self.strategy = strategy
        compute_dtype = model.compute_dtype

        def replica_step(images, labels, weights):
            probs = tf.cast(model(tf.cast(images, compute_dtype), training=False), tf.float32)
            per_example = tf.cast(loss_fn(labels, probs), tf.float32)
            correct = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32)
            sums = tf.stack([tf.reduce_sum(per_example * weights), tf.reduce_sum(correct * weights),
                             tf.reduce_sum(weights)])
            return sums, probs, labels, weights

        replica_step = tf.autograph.experimental.do_not_convert(replica_step)  # see Trainer's step
        if jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def sums_step(iterator):
            sums, _, _, _ = strategy.run(replica_step, args=next(iterator))
            return strategy.reduce("SUM", sums, axis=None)

        @tf.function
        def gather_step(iterator):
            sums, probs, labels, weights = strategy.run(replica_step, args=next(iterator))
            return (strategy.reduce("SUM", sums, axis=None), strategy.gather(probs, axis=0),
                    strategy.gather(labels, axis=0), strategy.gather(weights, axis=0))

        self._sums_step, self._gather_step = sums_step, gather_step

    def run(self, batches, steps: int, collect: bool, gather: bool = False) -> dict:
        """Loss and accuracy over the padded ``batches``; with ``collect`` also labels and probs.

        ``gather``: run the collecting step even without ``collect`` (its outputs dropped), for a
        split small enough that sharing the test split's traced function beats a second trace.
        """
        iterator = iter(self.strategy.experimental_distribute_dataset(batches))
        totals = np.zeros(3)
        labels_all, probs_all = [], []
        for _ in range(steps):
            with multiworker.graph_call("evaluation"):
                if collect or gather:
                    sums, probs, labels, weights = self._gather_step(iterator)
                    if collect:
                        keep = weights.numpy() > 0
                        probs_all.append(probs.numpy()[keep])
                        labels_all.append(labels.numpy()[keep])
                else:
                    sums = self._sums_step(iterator)
                totals += sums.numpy()
        count = max(1.0, totals[2])
        out = {"loss": float(totals[0] / count), "accuracy": float(totals[1] / count),
               "count": round(float(totals[2]))}
        if collect:
            out["labels"] = np.concatenate(labels_all).astype(np.int32)
            out["probs"] = np.concatenate(probs_all)
        return out
