"""The ``tf.data`` input pipeline: augmentation layers, decoding, per-split sources, batches.

Split from ``trainer.data.dataset`` (which finds, splits and checks the images): this module only turns a
``Split`` into tensors. ``make_source`` is built once per run and shared by every epoch;
``make_batches`` is a pure function of its arguments, so a resumed epoch sees the same order.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import TrainConfig
from trainer.data.dataset import Split


def augmentation_layers(cfg: TrainConfig) -> list:
    """Keras preprocessing layers for the configured augmentation (empty when all are off)."""
    import keras

    a = cfg.augment
    layers = []
    if a.flip and a.flip != "none":
        layers.append(keras.layers.RandomFlip(a.flip, seed=cfg.seed))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, fill_mode="nearest", seed=cfg.seed + 1))
    if a.shift:
        layers.append(keras.layers.RandomTranslation(a.shift, a.shift, fill_mode="nearest", seed=cfg.seed + 2))
    if a.zoom:
        layers.append(keras.layers.RandomZoom(a.zoom, fill_mode="nearest", seed=cfg.seed + 3))
    return layers


def _decode_tf(size: int):
    import tensorflow as tf

    def decode(path, label):
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, expand_animations=False)
        img = tf.image.resize(img, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8), label

    return decode


def make_source(split: Split, cfg: TrainConfig, cache_dir: Path | None = None):
    """Unbatched ``(uint8 image [S, S, 3], int32 label)`` examples of a split, decoded once.

    Built once per run and shared by every epoch's pipeline: in-memory pixels are wrapped, not
    copied; files are decoded and resized in parallel and cached (in memory or on disk).
    """
    import tensorflow as tf

    if split.stream is not None:
        return split.stream  # a packed stream builds its own pipeline per epoch
    if split.images is not None:
        return tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels))
    ds = ds.map(_decode_tf(cfg.image_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True)  # bad files were dropped and counted by trainer.data.images.verify_all
    if cfg.cache != "none":
        on_disk = cache_dir is not None and cfg.cache != "memory"
        ds = ds.cache(str(cache_dir / f"decoded-{len(split)}") if on_disk else "")
    return ds


def make_batches(
    source,
    num_examples: int,
    cfg: TrainConfig,
    batch_size: int,
    *,
    training: bool,
    epoch: int = 0,
    skip_examples: int = 0,
):
    """One epoch's batched pipeline over ``source`` (a pure function of its arguments).

    Order: shuffle (training; seeded per epoch, so a resumed epoch sees the same order) ->
    skip the images a resumed epoch already trained on -> batch -> augment (training; whole
    batches, parallel) -> prefetch. Skipping images, not batches, keeps a resumed epoch exact
    when the global batch changed (another number of workers or replicas): every image of the
    epoch is trained once, whatever the batch before and after. Yields ``(uint8 images [B, S, S, 3], int32 labels [B])``.
    A packed stream (``trainer.data.packed.PackedSource``) builds its own stages, in the same order,
    with shards instead of examples as the unit of the first shuffle.
    """
    import tensorflow as tf

    augment = _augment_fn(cfg) if training else None
    options = tf.data.Options()
    # No autotuning: dropping an epoch's iterator then waits for the autotune thread, 1.5-5 s
    # per epoch on 2 CPU cores (docs/benchmarks.md). AUTOTUNE below falls back to fixed
    # defaults: map parallelism = cores, a prefetch buffer that grows as needed.
    options.autotune.enabled = False
    if hasattr(source, "batches"):  # a packed stream, batched by its reader (data/packed.py)
        ds = source.batches(cfg, batch_size, training=training, epoch=epoch,
                            skip_examples=skip_examples, augment=augment)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
    ds = source
    if training:
        ds = ds.shuffle(num_examples, seed=cfg.seed + epoch, reshuffle_each_iteration=False)
    if skip_examples:
        ds = ds.skip(skip_examples)
    ds = ds.batch(batch_size, drop_remainder=False)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _augment_fn(cfg: TrainConfig):
    """uint8 batch -> augmented uint8 batch, or None when augmentation is off."""
    aug = augmentation_layers(cfg)
    if not aug:
        return None
    import keras
    import tensorflow as tf

    seq = keras.Sequential(aug)

    def augment(images, labels):
        out = seq(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), labels

    return augment


def steps_per_epoch(split: Split, global_batch: int) -> int:
    return -(-len(split) // global_batch)
