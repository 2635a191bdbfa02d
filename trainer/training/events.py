"""TensorBoard event files under ``<output>/tensorboard/``.

Written with TensorFlow's own ``tf.summary`` writer and ``tf.summary.write`` with the
scalars/images plugins' metadata (``tf.summary.scalar``/``image`` live in the ``tensorboard``
package, which TensorFlow's wheel no longer pulls in; the image does not need it) and pushed to the run directory with each checkpoint, so
``tensorboard --logdir gs://bucket/runs/`` shows every run of a parent side by side, live.

Tags (``TAGS``):

* per step (at the global step ``epoch * steps_per_epoch + step``, averaged over the steps
  since the last point: at most one point a second, and one at each epoch's end, because one
  write costs a few milliseconds): ``train/loss``, ``train/accuracy``, ``train/learning_rate``,
  ``train/images_per_second``;
* per epoch (at the epoch number, 1-based): ``epoch/loss``, ``epoch/accuracy``,
  ``epoch/val_loss``, ``epoch/val_accuracy``, ``epoch/learning_rate``,
  ``epoch/images_per_second``;
* at the end, as images: ``report/confusion_matrix`` and ``report/predictions`` (the report's
  own PNGs).

A resumed run opens a new event file in the same directory; TensorBoard merges them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from trainer.core.errors import ConfigError

log = logging.getLogger(__name__)

DIR = "tensorboard"
STEP_TAGS = ("train/loss", "train/accuracy", "train/learning_rate", "train/images_per_second")
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second")
EPOCH_TAGS = tuple(f"epoch/{k}" for k in EPOCH_KEYS)
IMAGE_TAGS = {"report/confusion_matrix": "confusion_matrix.png",
              "report/predictions": "predictions.png"}
TAGS = STEP_TAGS + EPOCH_TAGS + tuple(IMAGE_TAGS)


def _metadata(plugin: str) -> bytes:
    """SummaryMetadata naming TensorBoard's plugin (scalars, images), as the plugin writes it."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    meta.data_class = (summary_pb2.DATA_CLASS_SCALAR if plugin == "scalars"
                       else summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
    return meta.SerializeToString()


class EventWriter:
    """One ``tf.summary`` file writer on ``<local run dir>/tensorboard``."""

    def __init__(self, local_run_dir: Path):
        import tensorflow as tf

        self.dir = Path(local_run_dir) / DIR
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file named tensorboard in the run directory, a read-only one
            raise ConfigError(f"cannot write TensorBoard events to {self.dir} ({exc.strerror or exc}): "
                              f"remove or rename what is there, or use a new --output") from None
        self._writer = tf.summary.create_file_writer(str(self.dir))
        self._scalar_meta = _metadata("scalars")
        self._image_meta = _metadata("images")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        import tensorflow as tf

        with self._writer.as_default(step=int(step)):
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=self._scalar_meta)

    def step(self, global_step: int, loss: float, accuracy: float, learning_rate: float,
             images_per_second: float | None) -> None:
        values = {"train/loss": loss, "train/accuracy": accuracy, "train/learning_rate": learning_rate}
        if images_per_second is not None:
            values["train/images_per_second"] = images_per_second
        self.scalars(global_step, values)

    def epoch(self, epoch: int, row: Mapping[str, float]) -> None:
        self.scalars(epoch, {f"epoch/{k}": row[k] for k in EPOCH_KEYS if k in row})

    def report_images(self, step: int, report_dir: Path) -> None:
        """The report's confusion matrix and prediction grid, as TensorBoard images."""
        import tensorflow as tf

        with self._writer.as_default(step=int(step)):
            for tag, name in IMAGE_TAGS.items():
                path = Path(report_dir) / name
                if path.exists():
                    png = path.read_bytes()
                    height, width = tf.io.decode_png(png, channels=3).shape[:2]
                    # the images plugin's tensor: [width, height, encoded image, ...]
                    tensor = tf.constant([str(width).encode(), str(height).encode(), png])
                    tf.summary.write(tag, tensor, metadata=self._image_meta)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
