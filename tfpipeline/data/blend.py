"""Self-blended fakes: training-time forgeries made from real faces (SBI, Face X-ray family).

A face-swap or face-edit forgery leaves a blending boundary: inside a region, pixels come from
another source (different colour, sharpness, slight misalignment) and are feathered into the
face around them. :class:`SelfBlend` makes such a fake from a REAL training face by blending a
transformed copy of a face back into it through a soft mask, so a detector learns the boundary
artefact itself rather than the identities or the few hundred forgeries of a dataset. The copy
is of the same face (self-blended images, SBI) or, for a share `other_share` of the fakes, of
another face of the batch at the same place, colour-matched to the target inside the region
(Face X-ray's blending of two faces; what CIPLAB's composites are).

Per synthesised image (all random draws come from the layer's seed, so a run is repeatable):

- **mask**: one of the face regions of :data:`~tfpipeline.data.regions.FACE_LAYOUT` (an eye, both
  eyes, the nose, the mouth), a box-like superellipse with its centre jittered by up to 4 % of
  the side and its size scaled by 0.8-1.4; or (one time in five) a random rotated ellipse, i.e.
  a random convex region. Its edge is a smooth ramp whose width is drawn per image (2-12 % of the
  region), so the mask is soft, and exactly zero outside the ramp: pixels outside never change.
- **source**: the same face, or another face of the batch whose colours inside the region are
  matched to the target's (per-channel mean and spread), shifted by up to 2 % of the side, with
  a residual colour change (per-channel gain 0.9-1.1, offset +/- 8 grey levels) and a sharpness
  change (blurred or sharpened, the strength drawn in [-0.8, 1.0]).
- **blend**: `mask * source + (1 - mask) * face`; the label becomes the fake class.

`rate` is the share of each batch turned into such fakes; they replace real faces of the batch
(at most all of them), chosen at random.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfpipeline.config import AugmentConfig
from tfpipeline.data.regions import FACE_LAYOUT, REGIONS
from tfpipeline.errors import UserError

# Mask shapes drawn: the four regions, both eyes at once, and a random convex (ellipse) region.
SHAPES = (*REGIONS, "both_eyes", "convex")
_BOTH_EYES = (0.50, 0.46, 0.25, 0.08)
_CONVEX_SHARE = 0.2


def soft_region_mask(
    height: int,
    width: int,
    centre: tf.Tensor,
    half: tf.Tensor,
    angle: tf.Tensor,
    power: tf.Tensor,
    ramp: tf.Tensor,
) -> tf.Tensor:
    """Soft masks [N, H, W, 1] in [0, 1]: 1 inside a superellipse, a smooth ramp at its edge, 0 out.

    Args:
        centre: [N, 2] (x, y) as fractions of the side.
        half: [N, 2] half width / half height as fractions of the side.
        angle: [N] rotation in radians.
        power: [N] superellipse exponent (2: ellipse, 4+: rounded box).
        ramp: [N] edge width as a fraction of the region's size (0 would be a hard edge).
    """
    ys = (tf.range(height, dtype=tf.float32) + 0.5) / height
    xs = (tf.range(width, dtype=tf.float32) + 0.5) / width
    dx = xs[None, None, :] - centre[:, 0, None, None]
    dy = ys[None, :, None] - centre[:, 1, None, None]
    cos, sin = tf.cos(angle)[:, None, None], tf.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / half[:, 0, None, None]
    v = (-sin * dx + cos * dy) / half[:, 1, None, None]
    p = power[:, None, None]
    radius = tf.pow(tf.pow(tf.abs(u) + 1e-9, p) + tf.pow(tf.abs(v) + 1e-9, p), 1.0 / p)
    t = tf.clip_by_value((1.0 + ramp[:, None, None] / 2 - radius) / ramp[:, None, None], 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t))[..., None]  # smoothstep: soft, zero beyond the ramp


def blur3(images: tf.Tensor) -> tf.Tensor:
    """A 3x3 binomial blur of float images [N, H, W, C] (edges reflected)."""
    kernel = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tensordot(kernel, kernel, axes=0)[:, :, None, None]
    channels = images.shape[-1]
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, tf.tile(kernel, [1, 1, channels, 1]), [1, 1, 1, 1], "VALID")


@keras.saving.register_keras_serializable(package="tfpipeline")
class SelfBlend(keras.layers.Layer):
    """Replace a share of a batch's real faces with self-blended fakes (see the module docstring).

    Args:
        rate: share of each batch to turn into fakes, in (0, 1].
        real_index / fake_index: class indices of the real and fake classes.
        seed: seeds every draw.
        other_share: share of the fakes whose region comes from another face of the batch.

    Call: `(images [N, H, W, C] float 0..255, labels [N] int class indices)` ->
    `(images, labels, regions)`, `regions` [N, 4] float: for fakes synthesised in a face region,
    which of left eye, right eye, nose, mouth the mask covers (1) or not (0); -1 for random
    convex regions and for every image left alone (unknown).
    """

    def __init__(
        self,
        rate: float,
        real_index: int,
        fake_index: int,
        seed: int | None = None,
        other_share: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rate, self.real_index, self.fake_index = float(rate), int(real_index), int(fake_index)
        self.seed, self.other_share = seed, float(other_share)
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, low, high, seed=self.generator)

    def call(self, images, labels):
        images, labels, regions, _ = self.blend(images, labels)
        return images, labels, regions

    def blend(self, images, labels):
        """As `call`, plus the soft masks [N, H, W, 1] (zero for images left alone)."""
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.int32)
        n = tf.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            height, width = tf.shape(images)[1], tf.shape(images)[2]
        real = tf.equal(labels, self.real_index)
        share = tf.reduce_mean(tf.cast(real, tf.float32))
        chance = tf.minimum(1.0, self.rate / tf.maximum(share, 1e-6))
        chosen = tf.logical_and(real, self._uniform((n,)) < chance)

        centre, half, angle, power, region_hits = self._draw_shapes(n)
        ramp = self._uniform((n,), 0.02, 0.12) * 4.0  # relative to a unit half-size
        mask = soft_region_mask(height, width, centre, half, angle, power, ramp)
        source = self._source(self._donor(images, mask), height, width)
        blended = mask * source + (1.0 - mask) * images
        chosen4 = tf.cast(chosen, tf.float32)[:, None, None, None]
        out = chosen4 * blended + (1.0 - chosen4) * images
        labels = tf.where(chosen, self.fake_index, labels)
        regions = tf.where(chosen[:, None], region_hits, -tf.ones_like(region_hits))
        return out, labels, regions, mask * chosen4

    def _draw_shapes(self, n):
        """Per image: centre, half size, angle, power, and the 4 region indicators."""
        layout = tf.constant([FACE_LAYOUT[name] for name in REGIONS] + [_BOTH_EYES], tf.float32)  # [5, 4]
        pick = tf.cast(self._uniform((n,)) * 5, tf.int32)
        boxes = tf.gather(layout, tf.minimum(pick, 4))
        jitter = self._uniform((n, 2), -0.04, 0.04)
        scale = self._uniform((n, 1), 0.8, 1.4)
        convex = self._uniform((n,)) < _CONVEX_SHARE
        random_centre = self._uniform((n, 2), 0.3, 0.7)
        random_half = self._uniform((n, 2), 0.06, 0.2)
        centre = tf.where(convex[:, None], random_centre, boxes[:, :2] + jitter)
        half = tf.where(convex[:, None], random_half, boxes[:, 2:] * scale)
        angle = tf.where(convex, self._uniform((n,), -math.pi, math.pi), self._uniform((n,), -0.15, 0.15))
        power = tf.where(convex, tf.fill([n], 2.0), tf.fill([n], 4.0))
        hits = tf.one_hot(tf.minimum(pick, 3), 4)
        hits = tf.where((pick == 4)[:, None], tf.constant([[1.0, 1.0, 0.0, 0.0]]), hits)
        hits = tf.where(convex[:, None], -tf.ones_like(hits), hits)  # a random region: unknown
        return centre, half, angle, power, hits

    def _donor(self, images, mask):
        """Per image: itself, or (share `other_share`) another face of the batch colour-matched
        to it inside the mask (per-channel mean and standard deviation)."""
        n = tf.shape(images)[0]
        other = tf.roll(images, shift=1, axis=0)
        weight = mask / tf.maximum(tf.reduce_sum(mask, axis=(1, 2), keepdims=True), 1e-6)
        target_mean = tf.reduce_sum(images * weight, axis=(1, 2), keepdims=True)
        other_mean = tf.reduce_sum(other * weight, axis=(1, 2), keepdims=True)
        target_std = tf.sqrt(
            tf.reduce_sum(tf.square(images - target_mean) * weight, axis=(1, 2), keepdims=True)
        )
        other_std = tf.sqrt(tf.reduce_sum(tf.square(other - other_mean) * weight, axis=(1, 2), keepdims=True))
        matched = (other - other_mean) / tf.maximum(other_std, 1.0) * target_std + target_mean
        use_other = (self._uniform((n, 1, 1, 1)) < self.other_share) & (n > 1)
        return tf.where(use_other, tf.clip_by_value(matched, 0.0, 255.0), images)

    def _source(self, images, height, width):
        """The transformed copy: shifted, colour-shifted, blurred or sharpened."""
        n = tf.shape(images)[0]
        limit = tf.maximum(1, tf.cast(0.02 * tf.cast(tf.minimum(height, width), tf.float32), tf.int32))
        shift = tf.cast(tf.round(self._uniform((n, 2), -1.0, 1.0) * tf.cast(limit, tf.float32)), tf.int32)
        rows = (tf.range(height)[None, :] - shift[:, :1]) % height
        cols = (tf.range(width)[None, :] - shift[:, 1:]) % width
        moved = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
        gain = self._uniform((n, 1, 1, images.shape[-1]), 0.9, 1.1)
        offset = self._uniform((n, 1, 1, images.shape[-1]), -8.0, 8.0)
        coloured = moved * gain + offset
        amount = self._uniform((n, 1, 1, 1), -0.8, 1.0)  # < 0 blurs, > 0 sharpens
        detail = coloured - blur3(coloured)
        return tf.clip_by_value(coloured + amount * detail, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "real_index": self.real_index,
            "fake_index": self.fake_index,
            "seed": self.seed,
            "other_share": self.other_share,
        }


def make_blender(augment: AugmentConfig, class_names: tuple[str, ...], seed: int) -> SelfBlend | None:
    """The self-blend layer for `--synth-fakes`, or None when it is off.

    Raises:
        UserError: the task is not a two-class one holding the fake class.
    """
    if augment.synth_fakes <= 0:
        return None
    if len(class_names) != 2 or augment.fake_class not in class_names:
        raise UserError(
            f"--synth-fakes needs a two-class real/fake task with a '{augment.fake_class}' class "
            f"(or name it with --fake-class NAME); this data's classes are {', '.join(class_names)}"
        )
    fake = class_names.index(augment.fake_class)
    return SelfBlend(augment.synth_fakes, real_index=1 - fake, fake_index=fake, seed=seed + 7)
