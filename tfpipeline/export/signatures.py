"""Serving signatures: encoded image bytes or pixel batches in, class probabilities out.

The bytes signature preprocesses with the functions training used
(:mod:`tfpipeline.data.decode`: encoded_to_pixels, i.e. the header guard -> decode_image ->
match_channels -> resize_image, then scale_pixels), traced into the SavedModel graph, so a served
model sees exactly the pixels the training pipeline fed it. Every signature returns the same
outputs:

- ``probabilities`` float32 [N, K], columns in class-name order;
- ``class_index`` int64 [N] and ``class_name`` string [N]: the predicted class (for a binary
  model: the positive class when ``score >= threshold``, the run's own decision rule);
- binary models only: ``score`` float32 [N] (positive-class probability) and ``decision``
  bool [N] (``score >= threshold``);
- runs with an out-of-domain detector (:mod:`tfpipeline.ood`) only: ``ood_score`` float32 [N]
  (higher: less like the training images) and ``in_domain`` bool [N] (``ood_score <=`` the
  detector's threshold), computed in the graph from the same forward pass as the probabilities
  (Mahalanobis means and whitening matrix, or the energy head, as graph constants; the
  autoencoder's weights tracked with the model's).

Every signature first refuses a batch of more than ``max_batch`` images; the bytes signature
then refuses, image by image and before decoding it, one longer than ``max_bytes``, one that is
not JPEG/PNG/GIF/BMP, one with a truncated header and one declaring more than ``max_pixels`` or
a side over ``max_side`` (:class:`~tfpipeline.export.limits.ServingLimits`). Each refusal is an
InvalidArgumentError naming the input (``input image_bytes[3] declares 20000x20000 pixels
(400000000) in its PNG header, more than max_pixels 40000000``); the call fails as a whole, and
the next call is served as usual.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfpipeline.data.decode import encoded_to_pixels, scale_pixels
from tfpipeline.data.headers import NOT_AN_IMAGE, require
from tfpipeline.evaluation.run_context import ServingSpec
from tfpipeline.export.limits import ServingLimits

BYTES_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "predict_images"
UINT8_SIGNATURE = "predict_images_uint8"
BYTES_INPUT = "image_bytes"  # the `_bytes` suffix also tells Cloud-style REST front ends to expect b64
PIXELS_INPUT = "images"
__all__ = [
    "NOT_AN_IMAGE",
    "bytes_to_pixels",
    "checked_batch",
    "decode_batch",
    "error_reason",
    "make_functions",
]

# Images decoded at once within one call: each may take up to max_pixels x ~15 bytes while it is
# decoded and resized, so this bounds a call's peak memory (TF Serving runs calls in parallel).
DECODE_PARALLELISM = 2


def error_reason(message: str) -> str:
    """The reason in a signature's InvalidArgumentError message, without TensorFlow's framing
    ("Graph execution error:", node names, "assertion failed: [...]")."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[", "{{function_node")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = next((line for line in lines if not line.startswith(noise)), lines[0] if lines else "")
    if line.startswith("assertion failed: ["):
        line = line[len("assertion failed: [") :].rsplit("]", 1)[0]
    return line


def checked_batch(inputs: tf.Tensor, limits: ServingLimits, name: str) -> tf.Tensor:
    """`inputs` [N, ...], refused unless N <= `limits.max_batch` (InvalidArgumentError
    "input image_bytes holds 300 images, more than max_batch 256")."""
    size = tf.shape(inputs, out_type=tf.int64)[0]
    check = require(size <= limits.max_batch, f"input {name} holds ", size,
                    f" images, more than max_batch {limits.max_batch}")  # fmt: skip
    with tf.control_dependencies([check] if check is not None else []):
        return tf.identity(inputs)


def bytes_to_pixels(contents: tf.Tensor, where: Any, spec: ServingSpec, limits: ServingLimits) -> tf.Tensor:
    """One encoded image -> uint8 [H, W, C]: :func:`~tfpipeline.data.decode.encoded_to_pixels`, the
    training pipeline's own per-file path, with the export's limits.

    Args:
        where: how a refusal names the input (e.g. "input image_bytes[3]").

    Raises (at run time):
        tf.errors.InvalidArgumentError: a refusal by the header guard (see the module docstring),
            or the decoder's own error for a corrupt file of a known format.
    """
    size = tuple(spec.image_size)
    image = encoded_to_pixels(
        contents, spec.channels, size, spec.resize, spec.interpolation, where=where, **limits.guard
    )
    return tf.ensure_shape(image, spec.pixel_shape)


def decode_batch(contents: tf.Tensor, spec: ServingSpec, limits: ServingLimits) -> tf.Tensor:
    """string [N] -> uint8 [N, H, W, C], image by image (they may differ in size), at most
    DECODE_PARALLELISM at once; each refusal names its input, `input image_bytes[i]`."""
    contents = checked_batch(contents, limits, BYTES_INPUT)
    indices = tf.strings.as_string(tf.range(tf.shape(contents, out_type=tf.int64)[0]))
    names = tf.strings.join([f"input {BYTES_INPUT}[", indices, "]"])
    return tf.map_fn(
        lambda item: bytes_to_pixels(item[0], item[1], spec, limits),
        (contents, names),
        fn_output_signature=tf.TensorSpec(spec.pixel_shape, tf.uint8),
        parallel_iterations=DECODE_PARALLELISM,
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


def make_functions(
    model: Any, spec: ServingSpec, limits: ServingLimits, ood: Any = None
) -> dict[str, tuple[Any, list[tf.TensorSpec]]]:
    """Signature name -> (python function, input signature), ready for `add_endpoint`.

    Args:
        ood: the run's :class:`~tfpipeline.ood.scorer.OODScorer` (None: no OOD outputs); it
            then gives the model output as well, from the same forward pass.
    """

    units = 1 if spec.binary else len(spec.class_names)

    def from_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = checked_batch(pixels, limits, PIXELS_INPUT)
        nonempty = tf.shape(pixels)[0] > 0  # oneDNN's convolutions reject a batch of 0

        if ood is None:

            def run() -> tf.Tensor:
                return tf.cast(model(scale_pixels(pixels, spec.scaling), training=False), tf.float32)

            raw = tf.cond(nonempty, run, lambda: tf.zeros([0, units], tf.float32))
            return class_outputs(raw, spec)

        def run_ood() -> tuple[tf.Tensor, tf.Tensor]:
            raw, scores = ood(scale_pixels(pixels, spec.scaling))
            return tf.cast(raw, tf.float32), tf.cast(scores, tf.float32)

        raw, scores = tf.cond(
            nonempty, run_ood, lambda: (tf.zeros([0, units], tf.float32), tf.zeros([0], tf.float32))
        )
        outputs = class_outputs(raw, spec)
        outputs["ood_score"] = scores
        outputs["in_domain"] = scores <= tf.constant(ood.threshold, tf.float32)
        return outputs

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return from_pixels(decode_batch(image_bytes, spec, limits))

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


def build_archive(model: Any, spec: ServingSpec, limits: ServingLimits, ood: Any = None):
    """A `keras.export.ExportArchive` tracking `model` (and the OOD scorer's networks) with the
    three signatures."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for network in ood.models if ood is not None else ():
        archive.track(network)
    for name, (fn, signature) in make_functions(model, spec, limits, ood).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    return archive


def write_saved_model(
    model: Any, spec: ServingSpec, path: str, limits: ServingLimits, ood: Any = None
) -> None:
    """Write the SavedModel (variables, graph, signatures) to `path` (which must not exist yet)."""
    build_archive(model, spec, limits, ood).write_out(path, verbose=False)
