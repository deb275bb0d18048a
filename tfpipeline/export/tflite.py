"""TFLite conversion of a run's model, and how often it agrees with the Keras model.

The converted graph is the `predict_images` path (float32 pixels 0..255 -> scaling -> model ->
class probabilities in class order), so a TFLite caller only resizes the image. Agreement is
measured on the run's held-out images (val and test), preprocessed by the training pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import tensorflow as tf

from tfpipeline.data.decode import scale_pixels
from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import ServingSpec
from tfpipeline.export.signatures import class_outputs

log = logging.getLogger(__name__)

# Converted runtimes reorder float sums; probabilities may differ from Keras by this much, and an
# image whose Keras decision margin is within it may legitimately flip class on another CPU.
PROB_TOLERANCE = 1e-3


def convert_to_tflite(model: Any, spec: ServingSpec) -> bytes:
    """The flatbuffer of `pixels [N, H, W, C] float32 0..255 -> probabilities [N, K]`.

    Converted from a temporary SavedModel with that one signature: the SavedModel path freezes
    the Keras 3 variables into constants (converting a concrete function directly keeps them
    as uninitialised resource variables).
    """
    import tempfile

    import keras

    def probabilities(images):
        raw = model(scale_pixels(images, spec.scaling), training=False)
        return {"probabilities": class_outputs(raw, spec)["probabilities"]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=probabilities,
        input_signature=[tf.TensorSpec([None, *spec.pixel_shape], tf.float32, name="images")],
    )
    with tempfile.TemporaryDirectory(prefix="tfpipeline-tflite-") as folder:
        archive.write_out(f"{folder}/model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(f"{folder}/model", ["serving_default"])
        return converter.convert()


def tflite_probabilities(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
    """Run the converted model on float32 pixels [N, H, W, C] (0..255); (N, K) probabilities."""
    import warnings

    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": LiteRT is not a dependency
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(pixels, np.float32))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(out["index"]), dtype=np.float64)


def keras_probabilities(model: Any, spec: ServingSpec, pixels: np.ndarray) -> np.ndarray:
    """The Keras model's (N, K) probabilities for uint8/float pixels 0..255, in class order."""
    from tfpipeline.evaluation.run_report import class_probabilities

    raw = model(scale_pixels(tf.constant(pixels), spec.scaling), training=False)
    return class_probabilities(np.asarray(raw), len(spec.class_names), spec.positive_index)


def held_out_pixels(config: Any) -> tuple[np.ndarray, str]:
    """uint8 [N, H, W, C] of the run's val and test images, as training decoded them.

    Raises:
        UserError: the run's data cannot be found any more.
    """
    from tfpipeline.data.pipeline import decoded_images
    from tfpipeline.data.sources import resolve_source

    data = replace(config.data, cache="none")
    source = resolve_source(data)
    names = [s for s in ("val", "test") if s in source.splits and len(source.splits[s])]
    if not names:
        raise UserError(f"{source.location}: no val or test images to measure TFLite agreement on")
    batches = [
        images.numpy() for name in names for images, _ in decoded_images(source.splits[name], data).batch(256)
    ]
    return np.concatenate(batches), "+".join(names)


def agreement_report(
    probabilities: Callable[[np.ndarray], np.ndarray],
    model: Any,
    spec: ServingSpec,
    config: Any,
    *,
    what: str,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Top-class agreement of a converted model with the Keras `model` on held-out images.

    Args:
        probabilities: float32 pixels [N, H, W, C] 0..255 -> (N, K) probabilities (converted model).
        what: the converted format's name, for messages.
        max_images: use at most this many held-out images (slow reference runtimes).

    Returns:
        `agreement_pct`: share of images where the export reports the same class as Keras (a
        thresholded score for binary models, argmax otherwise); `decisive_agreement_pct`: the
        same over the images whose Keras decision margin (|score - threshold|, or top-1 minus
        top-2 probability) exceeds `tolerance`, which must be 100 for a correct conversion;
        `near_threshold`: how many images were within the tolerance; `max_abs_prob_diff`,
        `tolerance`, `num_images`, `split`. Agreement is None with a `note` when the run's data
        is not available any more.
    """
    try:
        pixels, split = held_out_pixels(config)
    except UserError as exc:
        log.warning("%s agreement not measured: %s", what, exc)
        return {"agreement_pct": None, "num_images": 0, "split": None, "note": str(exc)}
    pixels = pixels[:max_images] if max_images else pixels
    converted = np.asarray(probabilities(pixels.astype(np.float32)), dtype=np.float64)
    reference = keras_probabilities(model, spec, pixels)
    if converted.shape != reference.shape or not np.all(np.isfinite(converted)):
        raise RuntimeError(f"the {what} model gives malformed or non-finite probabilities (a conversion bug)")
    return {
        **compare_probabilities(converted, reference, spec),
        "num_images": int(len(pixels)),
        "split": split,
    }


def compare_probabilities(converted: np.ndarray, reference: np.ndarray, spec: ServingSpec) -> dict[str, Any]:
    """Agreement figures of converted vs Keras probabilities (see :func:`agreement_report`)."""
    agree = spec.rule.predict(converted) == spec.rule.predict(reference)
    decisive = decision_margin(reference, spec) > PROB_TOLERANCE
    return {
        "agreement_pct": round(100.0 * float(np.mean(agree)), 2),
        "decisive_agreement_pct": round(100.0 * float(np.mean(agree[decisive])), 2)
        if decisive.any()
        else None,
        "near_threshold": int(np.sum(~decisive)),
        "tolerance": PROB_TOLERANCE,
        "max_abs_prob_diff": float(np.max(np.abs(converted - reference))),
    }


def decision_margin(probs: np.ndarray, spec: ServingSpec) -> np.ndarray:
    """How far each decision is from flipping: |score - threshold| (binary) or top-1 - top-2."""
    if spec.binary:
        return np.abs(probs[:, spec.rule.positive_index] - spec.rule.value)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def tflite_report(flatbuffer: bytes, model: Any, spec: ServingSpec, config: Any) -> dict[str, Any]:
    """Size and top-class agreement of `flatbuffer` with `model` on the run's held-out images."""
    agreement = agreement_report(
        lambda pixels: tflite_probabilities(flatbuffer, pixels), model, spec, config, what="TFLite"
    )
    return {"size_bytes": len(flatbuffer), **agreement}
