"""Test-time augmentation: a model that averages its predictions over transformed inputs.

`with_tta(model, "flip")` returns a Keras model sharing `model`'s weights whose output is the
mean of the predictions on the image and on its mirror image. Evaluation, `predict` and the
exported signatures all predict through it, so a served model gives exactly the numbers
`evaluate` reported. Grad-CAM and training use the plain model.
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


def with_tta(model: keras.Model, mode: str) -> keras.Model:
    """`model` itself for `none`; for `flip`, a model averaging the image's and its mirror's output.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "none":
        return model
    if mode != "flip":
        raise ValueError(f"unknown test-time augmentation '{mode}'; known: {', '.join(TTA_MODES)}")
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name="image", dtype=model.inputs[0].dtype)
    plain = model(inputs, training=False)
    mirrored = model(HorizontalFlip(name="mirror")(inputs), training=False)
    averaged = layers.Average(dtype="float32", name="tta_mean")([plain, mirrored])
    return keras.Model(inputs, averaged, name=f"{model.name}_tta_flip")
