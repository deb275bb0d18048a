"""Region crops (`--region-crops SIZE`): classify a face by its eyes, nose and mouth at full resolution.

CIPLAB's fakes are composites in which an eye, the nose or the mouth was pasted in, and the file
name says which (:mod:`tfpipeline.data.regions`). A whole-image network at 128 px sees those
regions at half resolution, and one label for the whole face says nothing about where the edit is.
Here the model cuts a square of SIZE pixels around each region of the average face layout
(:data:`~tfpipeline.data.regions.FACE_LAYOUT`) out of the full image, runs one shared network on
the four crops, and answers per region: is this region edited? The image's probability of being
fake is the mean of the four. Training supervises each region with its own target: reals are
unedited everywhere; a CIPLAB fake is edited where its name says; a fake without the pattern (or a
self-blended one, whose forged region the generator reports) counts as edited in every region it
does not rule out.

Each crop is augmented on its own while training (a shift of up to `jitter` pixels inside the
image, a horizontal flip), which a whole-image flip could not do: it would swap the two eyes'
targets. At inference the crops sit at the layout's boxes, so evaluation, prediction, Grad-CAM
(:meth:`RegionCrops.paste`) and the exported model all see the same four squares.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.data.regions import FACE_LAYOUT, REGIONS
from tfpipeline.models.aux import AuxRegionModel

DEFAULT_JITTER = 4  # pixels a training crop may move from its box, each way (the recipe's shift)


@keras.saving.register_keras_serializable(package="tfpipeline")
class RegionCrops(keras.layers.Layer):
    """[N, H, W, C] images -> [N * 4, size, size, C] crops around the face regions (image-major:
    image 0's left eye, right eye, nose, mouth, then image 1's).

    Args:
        size: crop side in pixels (<= the image's sides).
        jitter: training only, each crop moves by up to this many pixels each way (kept inside
            the image).
        flip: training only, each crop is mirrored left-right with probability 1/2.
        seed: seeds the training draws; None draws it from Keras' global seed (`--seed`).
    """

    def __init__(
        self, size: int, jitter: int = DEFAULT_JITTER, flip: bool = True, seed: int | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.size, self.jitter, self.flip, self.seed = int(size), int(jitter), bool(flip), seed
        self._generator = keras.random.SeedGenerator(self.seed)

    def corners(self, height: int, width: int) -> np.ndarray:
        """int [4, 2] (top, left) of each region's crop at inference, in REGIONS order: centred on
        the layout's region centre, moved inside the image where it would cross an edge."""
        if self.size > min(height, width):
            raise ValueError(f"region crops of {self.size} px do not fit {height}x{width} images")
        centres = np.array([FACE_LAYOUT[r][1::-1] for r in REGIONS]) * [height, width]  # (y, x)
        corners = np.round(centres - self.size / 2).astype(np.int64)
        return np.clip(corners, 0, [height - self.size, width - self.size])

    def call(self, images, training=False):
        height, width = int(images.shape[1]), int(images.shape[2])
        batch = tf.shape(images)[0]
        corners = tf.tile(tf.constant(self.corners(height, width), tf.int32), [batch, 1])  # [N*4, 2]
        if training and self.jitter:
            shift = keras.random.randint(
                tf.shape(corners), -self.jitter, self.jitter + 1, seed=self._generator, dtype="int32"
            )
            corners = tf.clip_by_value(corners + shift, 0, [height - self.size, width - self.size])
        # Exact pixels by index (no resampling), with gradients to the image (FGSM, Grad-CAM).
        steps = tf.range(self.size)
        rows, cols = corners[:, :1] + steps, corners[:, 1:] + steps  # [N*4, size] each
        repeated = tf.repeat(images, len(REGIONS), axis=0)
        crops = tf.gather(tf.gather(repeated, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
        if training and self.flip:
            mirrored = keras.random.uniform((tf.shape(crops)[0], 1, 1, 1), seed=self._generator) < 0.5
            crops = tf.where(mirrored, tf.reverse(crops, axis=[2]), crops)
        return crops

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * len(REGIONS)
        return (batch, self.size, self.size, input_shape[-1])

    def paste(self, maps: np.ndarray, height: int, width: int) -> np.ndarray:
        """Per-crop maps [N * 4, size, size] placed back into [N, height, width] images at the
        inference boxes (the larger value where boxes overlap, 0 outside them): Grad-CAM's view."""
        maps = np.asarray(maps).reshape(-1, len(REGIONS), self.size, self.size)
        canvas = np.zeros((len(maps), height, width), maps.dtype)
        for r, (top, left) in enumerate(self.corners(height, width)):
            window = canvas[:, top : top + self.size, left : left + self.size]
            np.maximum(window, maps[:, r], out=window)
        return canvas

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "jitter": self.jitter,
            "flip": self.flip,
            "seed": self.seed,
        }


def region_crop_layer(model: keras.Model) -> RegionCrops | None:
    """The :class:`RegionCrops` layer of `model` (searched through nested models), or None."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, RegionCrops):
            return layer
        inner = region_crop_layer(layer) if getattr(layer, "layers", None) else None
        if inner is not None:
            return inner
    return None


def region_class_targets(labels, regions):
    """Each region's target in the model's own terms, the scored class's probability [N, 4].

    Args:
        labels: the images' 0/1 targets (1: the class the sigmoid scores, `--positive-class`
            or else class 1); whether 1 is "fake" depends on those settings.
        regions: edited-region targets [N, 4] (:func:`~tfpipeline.data.pipeline.region_targets_of`):
            1 edited, 0 not, -1 unknown; a real image's are all 0.

    An edited region takes the fake class's index and an unedited one the real class's (the image's
    own label for a real image, the other label for a fake); an unknown region, the image's label.
    """
    labels = tf.cast(tf.reshape(labels, (-1, 1)), tf.float32)
    regions = tf.cast(regions, tf.float32)
    real = tf.reduce_all(tf.equal(regions, 0.0), axis=1, keepdims=True)
    real_index = tf.where(real, labels, 1.0 - labels)
    return tf.where(regions < 0, labels, tf.where(regions > 0, 1.0 - real_index, real_index))


@keras.saving.register_keras_serializable(package="tfpipeline")
class RegionCropModel(AuxRegionModel):
    """A classifier over region crops, trained on each region's own target (module docstring).

    Wraps a functional network with outputs `[image probability, region probabilities [N, 4]]`.
    Like :class:`AuxRegionModel`, its `call` returns the image probability, so evaluation,
    prediction and export see an ordinary binary classifier. The compiled loss (binary
    cross-entropy, with the run's label smoothing) is applied to every region's probability
    against its target (:func:`region_class_targets`).
    """

    def __init__(self, network: keras.Model, aux_weight: float = 1.0, **kwargs):
        super().__init__(network, aux_weight, **kwargs)

    def step_loss(self, x, label, regions, main, predicted):
        if regions is None:  # no region targets: every region takes the image's label
            regions = -tf.ones((tf.shape(label)[0], len(REGIONS)))
        targets = tf.reshape(region_class_targets(label, regions), (-1, 1))
        return self.compute_loss(x=x, y=targets, y_pred=tf.reshape(predicted, (-1, 1)), training=True)


@keras.saving.register_keras_serializable(package="tfpipeline")
class PerImage(keras.layers.Layer):
    """[N * 4, F] per-crop rows -> [N, 4 * F], one row per image (its regions side by side), or
    back again with `inverse`."""

    def __init__(self, inverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)

    def call(self, rows):
        width = rows.shape[-1] // len(REGIONS) if self.inverse else rows.shape[-1] * len(REGIONS)
        return keras.ops.reshape(rows, (-1, width))

    def compute_output_shape(self, input_shape):
        batch, width = input_shape[0], input_shape[-1]
        if self.inverse:
            return (None if batch is None else batch * len(REGIONS), width // len(REGIONS))
        return (None if batch is None else batch // len(REGIONS), width * len(REGIONS))

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="tfpipeline")
class RegionMean(keras.layers.Layer):
    """[N, 4] region probabilities -> [N, 1], their mean: the image's probability of the scored class."""

    def call(self, regions):
        return keras.ops.mean(regions, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)


def region_features(patch_features):
    """The shared network's per-crop features [N * 4, F] as the image's features [N, 4 * F]
    (layer `region_features`, the embedding out-of-domain detection reads), and back to per-crop
    rows for the shared head, so that the image-level layer lies on the model's path."""
    features = PerImage(name="region_features")(patch_features)
    return PerImage(inverse=True, name="crop_features")(features)


def region_outputs(patch_probs) -> tuple:
    """(image probability [N, 1], region probabilities [N, 4]) from the shared head's per-crop
    probabilities [N * 4, 1]. The image output is the layer named `output`, whose input, the four
    region probabilities, is what out-of-domain detection takes as the head's input."""
    regions = PerImage(dtype="float32", name="regions")(patch_probs)
    return RegionMean(dtype="float32", name="output")(regions), regions
