"""The `autoencoder` detector: a small convolutional autoencoder of the training images.

Images are brought to [0, 1] from the model's pixel scaling and resized (area averaging) to
`side` x `side` (32 by default: enough for the gist of an image, and cheap to train on a CPU);
the autoencoder squeezes them through a 4x4x16 bottleneck and reconstructs them. The score is
the mean squared reconstruction error per pixel: images unlike the training set reconstruct
worse. It ignores the classifier entirely, which makes it a useful contrast to the
embedding-based detectors (and a weak one for simple, flat images that any autoencoder
reconstructs well).

:func:`autoencoder_input` and :func:`reconstruction_error` are TensorFlow ops, shared by
training, calibration and the exported graph (which tracks the autoencoder's weights).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfpipeline.errors import UserError

SIDE = 32
STEPS = 600  # optimisation steps (about 10 s on 2 CPU cores)
BATCH = 32
# scaling -> (scale, offset) bringing model pixels to [0, 1]
TO_UNIT = {"unit": (1.0, 0.0), "symmetric": (0.5, 0.5), "raw": (1.0 / 255.0, 0.0)}


def build_autoencoder(channels: int, side: int = SIDE) -> keras.Model:
    """Conv encoder (side -> side/8, 32/64/64 filters, 16-channel bottleneck) and a mirrored
    transposed-conv decoder with a sigmoid output, uncompiled."""
    if side % 8:
        raise UserError(f"autoencoder side must be a multiple of 8, got {side}")
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((side, side, channels), name="image"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="enc1"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="enc2"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="enc3"),
            layers.Conv2D(16, 1, activation="relu", name="bottleneck"),
            layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu", name="dec3"),
            layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu", name="dec2"),
            layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu", name="dec1"),
            layers.Conv2D(channels, 3, padding="same", activation="sigmoid", dtype="float32", name="pixels"),
        ],
        name="ood_autoencoder",
    )


def autoencoder_input(images: Any, scaling: str, side: int) -> Any:
    """Model-scaled pixels [N, H, W, C] -> float32 [N, side, side, C] in [0, 1]."""
    import tensorflow as tf

    scale, offset = TO_UNIT[scaling]
    unit = tf.cast(images, tf.float32) * scale + offset
    return tf.image.resize(unit, (side, side), method="area")


def reconstruction_error(autoencoder: keras.Model, images: Any, scaling: str, side: int) -> Any:
    """Mean squared reconstruction error per image [N] (float32 tensor)."""
    import tensorflow as tf

    target = autoencoder_input(images, scaling, side)
    reconstruction = tf.cast(autoencoder(target, training=False), tf.float32)
    return tf.reduce_mean(tf.square(reconstruction - target), axis=[1, 2, 3])


def train_autoencoder(
    dataset: Any, scaling: str, channels: int, *, side: int = SIDE, steps: int = STEPS, seed: int = 0
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit an autoencoder to the images of an ordered dataset of (images, labels) batches.

    Args:
        dataset: the training split, unaugmented.
        scaling: the model's pixel range.
        channels: 1 or 3.
        side: the autoencoder's image side.
        steps: optimisation steps (Adam 1e-3, batches of 32), spread over whole epochs.
        seed: seeds initialisation and shuffling.

    Returns:
        (the trained autoencoder, facts: epochs, steps, final training loss).
    """
    images = np.concatenate(
        [np.asarray(autoencoder_input(x, scaling, side)) for x, _ in dataset.as_numpy_iterator()]
    )
    keras.utils.set_random_seed(seed)
    model = build_autoencoder(channels, side)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    # Adam's slots created now, not in the first train step: that step would be traced twice
    # (see tfpipeline.training.compile.compile_model).
    model.optimizer.build(model.trainable_variables)
    epochs = max(1, math.ceil(steps / math.ceil(len(images) / BATCH)))
    history = model.fit(images, images, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
    facts = {"side": side, "epochs": epochs, "train_loss": float(history.history["loss"][-1])}
    return model, facts
