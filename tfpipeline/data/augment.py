"""Random augmentation of training batches (after the cache, so every epoch sees new draws).

Keras' preprocessing layers do flips, rotations, zooms, translations, brightness and contrast;
:class:`RandomShift` adds the whole-pixel shift with reflected borders that small-image training
uses (Keras' RandomTranslation shifts by fractions of a pixel and interpolates, which blurs a
32x32 image).
"""

from __future__ import annotations

import keras

from tfpipeline.config import AugmentConfig


@keras.saving.register_keras_serializable(package="tfpipeline")
class RandomShift(keras.layers.Layer):
    """Shift each image by whole pixels, up to `pixels` each way, filling with the reflection.

    Equivalent to reflect-padding by `pixels` and taking a random crop of the original size.
    Works on a batch [N, H, W, C] at once; inactive when not training.
    """

    def __init__(self, pixels: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pixels = int(pixels)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training or self.pixels == 0:
            return images
        import tensorflow as tf  # tf.pad's REFLECT mode and batched gathers

        p = self.pixels
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        offsets = keras.random.randint((batch, 2), 0, 2 * p + 1, seed=self.generator, dtype="int32")
        rows = offsets[:, :1] + tf.range(height)[None, :]  # [N, H]
        cols = offsets[:, 1:] + tf.range(width)[None, :]  # [N, W]
        shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
        return tf.gather(shifted, cols, axis=2, batch_dims=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pixels": self.pixels, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfpipeline")
class RandomWindow(keras.layers.Layer):
    """A random `size` x `size` window of each image of a batch (its own position per image)."""

    def __init__(self, size: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        import tensorflow as tf

        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        top = keras.random.randint((batch, 1), 0, height - self.size + 1, seed=self.generator, dtype="int32")
        left = keras.random.randint((batch, 1), 0, width - self.size + 1, seed=self.generator, dtype="int32")
        rows = top + tf.range(self.size)[None, :]
        cols = left + tf.range(self.size)[None, :]
        window = tf.gather(images, rows, axis=1, batch_dims=1)
        return tf.gather(window, cols, axis=2, batch_dims=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "seed": self.seed}


def make_augmenter(augment: AugmentConfig, seed: int) -> keras.Sequential | None:
    """Random layers for float images in [0, 255] (batches); None when all are off."""
    if not augment.enabled:
        return None
    steps = []
    if augment.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.shift:
        steps.append(RandomShift(augment.shift, seed=seed + 6))
    if augment.rotation:
        steps.append(keras.layers.RandomRotation(augment.rotation, fill_mode="reflect", seed=seed + 1))
    if augment.zoom:
        steps.append(keras.layers.RandomZoom(augment.zoom, fill_mode="reflect", seed=seed + 2))
    if augment.translation:
        steps.append(
            keras.layers.RandomTranslation(
                augment.translation, augment.translation, fill_mode="reflect", seed=seed + 3
            )
        )
    if augment.brightness:
        steps.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 4))
    if augment.contrast:
        steps.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(steps, name="augmentation")
