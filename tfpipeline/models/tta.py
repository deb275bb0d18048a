"""Test-time augmentation: a model that averages its predictions over transformed inputs.

`with_tta(model, mode)` returns a Keras model sharing `model`'s weights:

- `flip`: the mean of the predictions on the image and on its mirror image;
- `flip-shift`: half that, plus half the same mean over the image shifted one pixel up-left
  and one pixel down-right (reflected border) - the multi-crop evaluation of fast CIFAR
  training (airbench), 6 forward passes per image.

Evaluation, `predict` and the exported signatures all predict through it, so a served model
gives exactly the numbers `evaluate` reported. Grad-CAM and training use the plain model.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from tfpipeline.config import TTA_MODES


@keras.saving.register_keras_serializable(package="tfpipeline")
class HorizontalFlip(layers.Layer):
    """Mirror images [N, H, W, C] left to right (always, not at random)."""

    def call(self, images):
        return ops.flip(images, axis=-2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tfpipeline")
class Shift(layers.Layer):
    """Shift images by (`dy`, `dx`) whole pixels, filling from the reflected border."""

    def __init__(self, dy: int, dx: int, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, images):
        import tensorflow as tf

        pad = max(abs(self.dy), abs(self.dx))
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        return padded[:, pad - self.dy : pad - self.dy + height, pad - self.dx : pad - self.dx + width, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


def with_tta(model: keras.Model, mode: str) -> keras.Model:
    """`model` itself for `none`; otherwise a model averaging over the mode's views.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "none":
        return model
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation '{mode}'; known: {', '.join(TTA_MODES)}")
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name="image", dtype=model.inputs[0].dtype)

    def mirrored_mean(x, tag):
        plain = model(x, training=False)
        mirrored = model(HorizontalFlip(name=f"mirror{tag}")(x), training=False)
        return layers.Average(dtype="float32", name=f"mean{tag}")([plain, mirrored])

    output = mirrored_mean(inputs, "")
    if mode == "flip-shift":
        shifted = [
            mirrored_mean(Shift(dy, dx, name=f"shift{i}")(inputs), str(i))
            for i, (dy, dx) in enumerate(((-1, -1), (1, 1)))
        ]
        output = layers.Average(dtype="float32", name="tta_mean")(
            [output, layers.Average(dtype="float32", name="shifts_mean")(shifted)]
        )
    return keras.Model(inputs, output, name=f"{model.name}_tta_{mode.replace('-', '_')}")
