"""Model export: what ``<output>/model/`` holds, and how to load it back.

* ``model.keras``: the Keras model (``keras.saving.load_model``), taking pixel arrays
  [B, S, S, 3] in 0..255;
* ``saved_model/``: a TensorFlow SavedModel for serving (TF Serving, Vertex AI, ``tf.saved_model.load``)
  with two signatures: ``serving_default`` takes encoded images (JPEG/PNG/BMP/GIF bytes) of any
  size and returns ``probabilities``, ``class_id`` and ``class_name``; ``classify_pixels`` takes
  pixel arrays like ``model.keras``;
* ``class_names.json`` and ``model_info.json`` (input size, model name, classes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _plain_copy(model):
    """The same architecture and weights outside any distribution strategy (safe to save)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def export_model(model, class_names: list[str], image_size: int, model_name: str, dest: Path) -> None:
    import keras
    import tensorflow as tf

    dest.mkdir(parents=True, exist_ok=True)
    plain = _plain_copy(model)
    plain.save(dest / "model.keras")

    names = tf.constant(list(class_names))

    def classify_pixels(images):
        probs = tf.cast(plain(tf.cast(images, tf.float32), training=False), tf.float32)
        ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_id": ids, "class_name": tf.gather(names, ids)}

    def decode(encoded):
        img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        img = tf.image.resize(img, (image_size, image_size), antialias=True)
        return tf.clip_by_value(tf.round(img), 0.0, 255.0)

    def classify_images(encoded):
        images = tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec((image_size, image_size, 3), tf.float32))
        return classify_pixels(images)

    archive = keras.export.ExportArchive()
    archive.track(plain)
    archive.add_endpoint("serving_default", classify_images, input_signature=[tf.TensorSpec([None], tf.string)])
    archive.add_endpoint(
        "classify_pixels", classify_pixels,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
    )
    archive.write_out(str(dest / "saved_model"), verbose=False)

    (dest / "class_names.json").write_text(json.dumps(list(class_names), indent=1))
    info = {"model": model_name, "image_size": image_size, "channels": 3, "input_range": [0, 255],
            "class_names": list(class_names)}
    (dest / "model_info.json").write_text(json.dumps(info, indent=1))


def load_for_prediction(model_dir: Path):
    """(keras model, class names, image size) from an exported ``model/`` directory."""
    import keras

    info = json.loads((model_dir / "model_info.json").read_text())
    model = keras.saving.load_model(model_dir / "model.keras")
    return model, info["class_names"], info["image_size"]
