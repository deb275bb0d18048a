"""ONNX conversion with tf2onnx (optional: `pip install tfpipeline[onnx]`).

Like the TFLite export, the converted graph is the `predict_images` path: float32 pixels
[N, H, W, C] 0..255 (already resized) -> scaling -> model -> `probabilities` [N, K] in class
order. Agreement with the Keras model is measured with ONNX's own reference evaluator (pure
NumPy, so no runtime dependency beyond `onnx`), on at most `AGREEMENT_IMAGES` held-out images
because that evaluator is slow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfpipeline.data.decode import scale_pixels
from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import ServingSpec
from tfpipeline.export.signatures import class_outputs

OPSET = 17
AGREEMENT_IMAGES = 16


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise UserError(
            "--format onnx needs tf2onnx: pip install 'tfpipeline[onnx]' (tf2onnx==1.17.0)"
        ) from None
    return tf2onnx


def convert_to_onnx(model: Any, spec: ServingSpec) -> bytes:
    """The serialised ONNX model of `images -> probabilities`."""
    tf2onnx = _tf2onnx()

    @tf.function(input_signature=[tf.TensorSpec([None, *spec.pixel_shape], tf.float32, name="images")])
    def probabilities(images):
        raw = model(scale_pixels(images, spec.scaling), training=False)
        return {"probabilities": class_outputs(raw, spec)["probabilities"]}

    proto, _ = tf2onnx.convert.from_function(
        probabilities, input_signature=probabilities.input_signature, opset=OPSET
    )
    return proto.SerializeToString()


def onnx_probabilities(serialised: bytes, pixels: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnx's reference evaluator; (N, K) probabilities."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load_from_string(serialised)
    evaluator = ReferenceEvaluator(proto)
    (probs,) = evaluator.run(["probabilities"], {proto.graph.input[0].name: np.asarray(pixels, np.float32)})
    return np.asarray(probs, dtype=np.float64)


def onnx_report(serialised: bytes, model: Any, spec: ServingSpec, config: Any) -> dict[str, Any]:
    """Size, opset and top-class agreement of the ONNX model with `model` on held-out images."""
    import onnx

    from tfpipeline.export.tflite import agreement_report

    agreement = agreement_report(
        lambda pixels: onnx_probabilities(serialised, pixels),
        model,
        spec,
        config,
        what="ONNX",
        max_images=AGREEMENT_IMAGES,
    )
    tf2onnx = _tf2onnx()
    return {
        "size_bytes": len(serialised),
        "opset": OPSET,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "evaluator": "onnx.reference.ReferenceEvaluator",
        **agreement,
    }
