"""Serving signatures: encoded image bytes or pixel batches in, class probabilities out.

The bytes signature preprocesses with the functions training used
(:mod:`tfpipeline.data.decode`: encoded_to_pixels, i.e. decode_image -> match_channels ->
resize_image, then scale_pixels), traced into the SavedModel graph, so a served model sees
exactly the pixels the training pipeline fed it. Every signature returns the same outputs:

- ``probabilities`` float32 [N, K], columns in class-name order;
- ``class_index`` int64 [N] and ``class_name`` string [N]: the predicted class (for a binary
  model: the positive class when ``score >= threshold``, the run's own decision rule);
- binary models only: ``score`` float32 [N] (positive-class probability) and ``decision``
  bool [N] (``score >= threshold``).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfpipeline.data.decode import encoded_to_pixels, scale_pixels
from tfpipeline.evaluation.run_context import ServingSpec

BYTES_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "predict_images"
UINT8_SIGNATURE = "predict_images_uint8"
BYTES_INPUT = "image_bytes"  # the `_bytes` suffix also tells Cloud-style REST front ends to expect b64
PIXELS_INPUT = "images"
NOT_AN_IMAGE = "is not a decodable image (expected JPEG, PNG, BMP or GIF bytes)"

# Magic numbers of the formats TensorFlow's decoders accept (JPEG via tf.io.is_jpeg).
_MAGIC = ((b"\x89PNG\r\n\x1a\n",), (b"GIF87a", b"GIF89a"), (b"BM",))


def is_image_bytes(contents: tf.Tensor) -> tf.Tensor:
    """Scalar bool: `contents` starts with a JPEG, PNG, GIF or BMP signature."""
    checks = [tf.io.is_jpeg(contents)]
    for magics in _MAGIC:
        for magic in magics:
            checks.append(tf.equal(tf.strings.substr(contents, 0, len(magic)), magic))
    return tf.reduce_any(tf.stack(checks))


def bytes_to_pixels(contents: tf.Tensor, index: tf.Tensor, spec: ServingSpec) -> tf.Tensor:
    """One encoded image -> uint8 [H, W, C]: :func:`~tfpipeline.data.decode.encoded_to_pixels`, the
    training pipeline's own per-file path, behind a check that the bytes are an image.

    Raises (at run time):
        tf.errors.InvalidArgumentError: "input image_bytes[i] is not a decodable image ..." when
            the bytes are not JPEG/PNG/BMP/GIF; the decoder's own InvalidArgumentError for a
            corrupt file of a known format.
    """
    message = tf.strings.format(f"input {BYTES_INPUT}[{{}}] {NOT_AN_IMAGE}", index)
    check = tf.debugging.Assert(is_image_bytes(contents), [message], summarize=1)
    with tf.control_dependencies([check]):
        contents = tf.identity(contents)
    size = tuple(spec.image_size)
    image = encoded_to_pixels(contents, spec.channels, size, spec.resize, spec.interpolation)
    return tf.ensure_shape(image, spec.pixel_shape)


def decode_batch(contents: tf.Tensor, spec: ServingSpec) -> tf.Tensor:
    """string [N] -> uint8 [N, H, W, C], one image at a time (images may differ in size)."""
    indices = tf.range(tf.shape(contents, out_type=tf.int64)[0])
    return tf.map_fn(
        lambda item: bytes_to_pixels(item[0], item[1], spec),
        (contents, indices),
        fn_output_signature=tf.TensorSpec(spec.pixel_shape, tf.uint8),
    )


def class_outputs(raw: tf.Tensor, spec: ServingSpec) -> dict[str, tf.Tensor]:
    """Model output -> the signature outputs (see the module docstring)."""
    raw = tf.cast(raw, tf.float32)
    names = tf.constant(list(spec.class_names), dtype=tf.string)
    if not spec.binary:
        class_index = tf.argmax(raw, axis=1, output_type=tf.int64)
        return {
            "probabilities": raw,
            "class_index": class_index,
            "class_name": tf.gather(names, class_index),
        }
    score = tf.reshape(raw, [-1])
    columns = [1.0 - score, score] if spec.positive_index == 1 else [score, 1.0 - score]
    decision = score >= tf.constant(spec.threshold, tf.float32)
    positive, negative = spec.positive_index, 1 - spec.positive_index
    class_index = tf.where(decision, tf.constant(positive, tf.int64), tf.constant(negative, tf.int64))
    return {
        "probabilities": tf.stack(columns, axis=1),
        "class_index": class_index,
        "class_name": tf.gather(names, class_index),
        "score": score,
        "decision": decision,
    }


def make_functions(model: Any, spec: ServingSpec) -> dict[str, tuple[Any, list[tf.TensorSpec]]]:
    """Signature name -> (python function, input signature), ready for `add_endpoint`."""

    units = 1 if spec.binary else len(spec.class_names)

    def from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        def run() -> tf.Tensor:
            return tf.cast(model(scale_pixels(pixels, spec.scaling), training=False), tf.float32)

        # An empty batch must give empty outputs; oneDNN's convolutions reject a batch of 0.
        raw = tf.cond(tf.shape(pixels)[0] > 0, run, lambda: tf.zeros([0, units], tf.float32))
        return class_outputs(raw, spec)

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return from_pixels(decode_batch(image_bytes, spec))

    def serve_float(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return from_pixels(images)

    def serve_uint8(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return from_pixels(images)

    pixels = [None, *spec.pixel_shape]
    return {
        BYTES_SIGNATURE: (serve_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]),
        FLOAT_SIGNATURE: (serve_float, [tf.TensorSpec(pixels, tf.float32, name=PIXELS_INPUT)]),
        UINT8_SIGNATURE: (serve_uint8, [tf.TensorSpec(pixels, tf.uint8, name=PIXELS_INPUT)]),
    }


def build_archive(model: Any, spec: ServingSpec):
    """A `keras.export.ExportArchive` tracking `model` with the three signatures."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in make_functions(model, spec).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    return archive


def write_saved_model(model: Any, spec: ServingSpec, path: str) -> None:
    """Write the SavedModel (variables, graph, signatures) to `path` (which must not exist yet)."""
    build_archive(model, spec).write_out(path, verbose=False)
