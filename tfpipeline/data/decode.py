"""In-graph image decoding, resizing and scaling: the one definition training, checking and
serving share, so an exported model preprocesses bytes exactly as the training pipeline did.

Everything here is TensorFlow ops only (no Python per image), so it runs in parallel inside
`tf.data` and can be traced into a SavedModel signature.

Decoding is guarded: :func:`decode_image` reads the dimensions an image declares from its
header bytes and refuses oversized or undecodable input before any pixel buffer is allocated,
and decodes only a GIF's first frame (:mod:`tfpipeline.data.headers`).
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.data.headers import DATA_MAX_PIXELS, DATA_MAX_SIDE, GIF, JPEG, decode_gif_frame, guard_header

# Libjpeg can decode at 1/2, 1/4 and 1/8 of full size straight from the DCT coefficients,
# which skips most of the inverse-DCT and upsampling work.
JPEG_RATIOS = (1, 2, 4, 8)

PIXEL_RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0), "raw": (0.0, 255.0)}


def one_pass_options() -> tf.data.Options:
    """tf.data options for a single decoding pass over a list of files (the data check's pass,
    the pixel cache's fill): runtime autotuning off.

    With autotuning on, destroying such a pass's iterator waited 1.8-2.6 s, with the cores idle,
    in about half of the passes over CIPLAB's 1,831 files (measured on 2 cores of an AMD EPYC Zen 3;
    the same slow mode showed on Zen 5): a first epoch took ~6.2 s instead of ~3.7 s. Without it,
    `AUTOTUNE` parallelism is the number of cores, which a CPU-bound decode wants anyway: the pass
    itself took as long (medians of 5: 3.8 s off, 4.0 s on), its teardown 0.01 s every time.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def jpeg_ratio_index(source_hw: tf.Tensor, target_hw: tuple[int, int]) -> tf.Tensor:
    """Index into `JPEG_RATIOS` of the largest reduction that keeps the image >= target size.

    Args:
        source_hw: integer tensor [height, width] of the encoded JPEG.
        target_hw: the size the image will be resized to afterwards.

    Returns:
        An int32 scalar tensor; 0 (full scale) when the source is less than twice the target.
    """
    ratios = tf.constant(JPEG_RATIOS, source_hw.dtype)[:, None]
    fits = tf.reduce_all(source_hw // ratios >= tf.constant(target_hw, source_hw.dtype), axis=1)
    # Ratios that fit form a prefix (1 always fits when the source is large enough, and when
    # it is not, nothing does and full scale is used): count them.
    return tf.maximum(tf.reduce_sum(tf.cast(fits, tf.int32)) - 1, 0)


def decode_image(
    contents: tf.Tensor,
    channels: int,
    target_hw: tuple[int, int] | None = None,
    *,
    where: Any = "image",
    max_pixels: int = DATA_MAX_PIXELS,
    max_side: int = DATA_MAX_SIDE,
    max_bytes: int | None = None,
) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes to a uint8 [H, W, channels] tensor, behind the header guard.

    :func:`guard_header` refuses oversized or undecodable input before any pixel buffer exists.
    JPEGs are decoded at a reduced DCT scale when `target_hw` is given and the source is at
    least twice as large; GIFs yield their first frame (:func:`decode_gif_frame`); 16-bit PNGs
    are scaled to 8 bits; alpha is dropped and CMYK converted by the decoder. Every format is
    decoded to RGB first and converted to grayscale afterwards when `channels` is 1:
    TensorFlow's GIF, BMP and CMYK JPEG decoders cannot produce one channel directly, and one
    conversion for all formats gives the same grey values whatever the file type.

    Args:
        contents: scalar string tensor with the encoded file.
        channels: 1 (grayscale) or 3 (RGB).
        target_hw: final size, enabling reduced-scale JPEG decode; None decodes at full size.
        where, max_pixels, max_side, max_bytes: see :func:`guard_header`; the defaults are the
            data stage's limits (DATA_MAX_PIXELS, DATA_MAX_SIDE, no byte limit).

    Raises:
        tf.errors.InvalidArgumentError (at run time) for refused, corrupt or unsupported bytes.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    header = guard_header(contents, where, max_pixels=max_pixels, max_side=max_side, max_bytes=max_bytes)

    # One switch over every way to decode (a nested switch per format doubled the graph, and
    # building it is a fixed cost of every pipeline): PNG and BMP (and, unreachably, unknown
    # bytes), then a JPEG at each ratio, then a GIF's first frame.
    jpeg_ratios = JPEG_RATIOS if target_hw is not None else (1,)
    branches = [lambda: tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)]
    branches += [(lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r)) for r in jpeg_ratios]
    branches.append(lambda: decode_gif_frame(contents, where, max_pixels, max_side))
    jpeg = 1
    if target_hw is not None:
        jpeg += jpeg_ratio_index(tf.stack([header.height, header.width]), target_hw)
    gif = len(branches) - 1
    index = tf.where(tf.equal(header.kind, JPEG), jpeg, tf.where(tf.equal(header.kind, GIF), gif, 0))
    image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return match_channels(image, channels)


def match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Convert an [..., H, W, C] uint8/float image between 1 and 3 channels."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if have == 3 and channels == 1:
        return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), image.dtype)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize_image(image: tf.Tensor, size_hw: tuple[int, int], method: str, interpolation: str) -> tf.Tensor:
    """Resize to `size_hw` and return uint8, so caches hold a quarter of the float32 bytes.

    Args:
        image: uint8 [H, W, C] (or batched [N, H, W, C]).
        method: `stretch` ignores aspect ratio (the assessment's choice); `crop` takes the
            largest centred window of the target aspect ratio; `pad` letterboxes with black.
        interpolation: a Keras interpolation name (`bilinear`, `nearest`, `bicubic`, ...).
    """
    resized = keras.ops.image.resize(
        tf.cast(image, tf.float32),
        size_hw,
        interpolation=interpolation,
        crop_to_aspect_ratio=method == "crop",
        pad_to_aspect_ratio=method == "pad",
        fill_value=0.0,
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def scale_pixels(images: tf.Tensor, scaling: str) -> tf.Tensor:
    """Map 0..255 pixels (any dtype) to the float32 range a model expects.

    `unit` -> [0, 1]; `symmetric` -> [-1, 1]; `raw` -> [0, 255] (models that normalise
    internally, such as resnet50_head with its own `preprocess_input`).
    """
    images = tf.cast(images, tf.float32)
    if scaling == "unit":
        return images / 255.0
    if scaling == "symmetric":
        return images / 127.5 - 1.0
    if scaling == "raw":
        return images
    raise ValueError(f"unknown scaling '{scaling}'")


def encoded_to_pixels(
    contents: tf.Tensor,
    channels: int,
    size_hw: tuple[int, int],
    resize: str,
    interpolation: str,
    **guard: Any,
) -> tf.Tensor:
    """One encoded file -> uint8 [H, W, channels] at `size_hw`: the training pipeline's steps.

    Training (`pipeline.decoded_images`), `tfpipeline predict` and the exported serving
    signature all call this, then :func:`scale_pixels`, so a served model sees exactly the
    pixels it was trained on. `guard` (`where`, `max_pixels`, `max_side`, `max_bytes`) goes to
    :func:`decode_image`: training keeps the data stage's limits, an export passes its own.
    """
    image = decode_image(contents, channels, size_hw, **guard)
    return resize_image(match_channels(image, channels), size_hw, resize, interpolation)


@functools.lru_cache(maxsize=32)
def file_decoder(channels: int, size_hw: tuple[int, int], resize: str, interpolation: str) -> Any:
    """A path -> uint8 [H, W, channels] function (:func:`encoded_to_pixels` of the file's bytes),
    traced once per process for each decode setting.

    Every pipeline that decodes files (the data check's pass, a split's cache fill, a streamed
    split) maps this one function, so tracing the guarded decode graph (0.2-0.5 s on 2 cores of
    an AMD EPYC Zen 3) is paid by a process's first such pipeline only.
    """

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def decode_file(path: tf.Tensor) -> tf.Tensor:
        return encoded_to_pixels(tf.io.read_file(path), channels, size_hw, resize, interpolation)

    return decode_file


def unscale_pixels(images: Any, scaling: str) -> np.ndarray:
    """Invert :func:`tfpipeline.data.decode.scale_pixels`: model inputs -> displayable uint8."""
    images = np.asarray(images, dtype=np.float32)
    if scaling == "unit":
        images = images * 255.0
    elif scaling == "symmetric":
        images = (images + 1.0) * 127.5
    elif scaling != "raw":
        raise ValueError(f"unknown scaling '{scaling}'")
    return np.clip(np.round(images), 0, 255).astype(np.uint8)
