"""Fixed high-pass input stems for detecting local editing artefacts (`--stem srm|residual`).

Splices and blends live in the fine, high-frequency residue of an image (noise statistics,
resampling traces, blending boundaries), which a network trained from scratch on a few thousand
faces learns to ignore in favour of content. These stems hand it the residue directly; both are
fixed (not trained) and registered, so saved models carry them.

- `srm`: the three spatial rich-model filters (Fridrich & Kodovsky 2012) that SRM-based
  manipulation detectors use (Zhou et al. 2018): a 3x3 and a 5x5 ("KV") second-order residual
  and a horizontal 1-D second-order residual, per colour channel, truncated to +/- 3 grey
  levels (the residue, not the content) and scaled to [-1, 1].
- `residual`: x - up(down(x)) with nearest-neighbour resampling by 2 (NPR, Tan et al. 2024):
  what upsampling by a generator or a resize would not reproduce.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

_KV = (
    np.array(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        np.float32,
    )
    / 12.0
)
_SQUARE = np.zeros((5, 5), np.float32)
_SQUARE[1:4, 1:4] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], np.float32) / 4.0
_LINE = np.zeros((5, 5), np.float32)
_LINE[2, 1:4] = np.array([1, -2, 1], np.float32) / 2.0
# The three SRM filters of Zhou et al. 2018 (RGB-N), as 5x5 kernels, last axis = filter.
SRM_KERNELS = np.stack([_SQUARE, _KV, _LINE], axis=-1)
SRM_TRUNCATE = 3.0  # grey levels


@keras.saving.register_keras_serializable(package="tfpipeline")
class SRMFilters(layers.Layer):
    """Three fixed SRM residuals per channel of [0, 1] images -> 3 * C channels in [-1, 1]."""

    def build(self, input_shape):
        channels = int(input_shape[-1])
        # depthwise kernel [5, 5, C, 3]: the same three filters for every channel
        self.kernel = np.repeat(SRM_KERNELS[:, :, None, :], channels, axis=2)

    def call(self, images):
        # In float32 whatever the compute dtype: residuals of a few grey levels out of 255 are
        # below bfloat16's resolution (8 significant bits) at bright pixels.
        pixels = ops.cast(images, "float32") * 255.0
        residue = ops.depthwise_conv(pixels, ops.convert_to_tensor(self.kernel, "float32"), 1, padding="same")
        return ops.cast(ops.clip(residue, -SRM_TRUNCATE, SRM_TRUNCATE) / SRM_TRUNCATE, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3 * input_shape[-1])


@keras.saving.register_keras_serializable(package="tfpipeline")
class NeighbourResidual(layers.Layer):
    """x - up(down(x)), nearest neighbour by 2, scaled so typical residues are O(1)."""

    def __init__(self, gain: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = float(gain)

    def call(self, images):
        down = images[:, ::2, ::2, :]
        up = ops.repeat(ops.repeat(down, 2, axis=1), 2, axis=2)
        up = up[:, : ops.shape(images)[1], : ops.shape(images)[2], :]
        return (images - up) * self.gain

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def high_pass(stem: str, x):
    """Apply the named fixed stem (`srm` or `residual`) to model inputs in [0, 1]."""
    if stem == "srm":
        return SRMFilters(name="srm")(x)
    if stem == "residual":
        return NeighbourResidual(name="neighbour_residual")(x)
    raise ValueError(f"unknown high-pass stem '{stem}'")
