"""The bare script: the tutorial's recipe as a user would write it, to a >= 97% digits model.

Whole-process baseline for ``python -m bench --only process``: scikit-learn's digits upscaled
to 64x64x3, the tutorial's CNN, adam, ``model.fit`` at batch 32; after each epoch the test set
is checked and training stops at >= 97% (it is told when to stop, which a real script is not),
then the model is saved. Prints ``BENCH_RESULT {json}`` last.
"""

import json
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
keras.utils.set_random_seed(seed)
digits = load_digits()
x = tf.image.resize(digits.images[..., None] / 16.0, (64, 64)).numpy().repeat(3, axis=-1)
x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=seed)
model = keras.Sequential([
    keras.Input((64, 64, 3)),
    keras.layers.Conv2D(32, (3, 3), activation="relu"), keras.layers.MaxPooling2D((2, 2)),
    keras.layers.Conv2D(64, (3, 3), activation="relu"), keras.layers.MaxPooling2D((2, 2)),
    keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
accuracies = []


class StopAt97(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        accuracies.append(float(np.mean(self.model.predict(x_test, verbose=0).argmax(-1) == y_test)))
        self.model.stop_training = accuracies[-1] >= 0.97


model.fit(x_train, y_train, epochs=30, batch_size=32, validation_split=0.1, verbose=0, callbacks=[StopAt97()])
model.save(tempfile.mkdtemp() + "/model.keras")
print("BENCH_RESULT " + json.dumps({"test_accuracy": accuracies, "epochs": len(accuracies)}))
