"""The baseline: the tutorial's own training script (seeds/000, sections 3-4), unchanged in spirit.

NumPy arrays in memory, normalized to [0, 1] up front, the Sequential CNN at 64x64x3, adam,
sparse categorical cross-entropy, ``model.fit(train_images, train_labels, epochs=...,
validation_data=(val_images, val_labels))`` with Keras' default ``batch_size=32``. The only
departure is ``verbose=0``: the progress bar costs the baseline time, so we leave it out.
"""

from __future__ import annotations


def build_model(num_classes: int = 10, image_size: int = 64):
    from tensorflow.keras.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
    from tensorflow.keras.models import Sequential

    return Sequential([
        Input((image_size, image_size, 3)),  # the tutorial's input_shape=(64, 64, 3), Keras 3 spelling
        Conv2D(32, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(num_classes, activation="softmax"),
    ])


def train(train_images, train_labels, val_images, val_labels, epochs: int, callbacks=(), batch_size: int = 32):
    model = build_model(int(train_labels.max()) + 1, train_images.shape[1])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train_images, train_labels, epochs=epochs, batch_size=batch_size,
                        validation_data=(val_images, val_labels), callbacks=list(callbacks), verbose=0)
    return model, history
