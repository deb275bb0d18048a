"""A trained model for inference: float32, whatever precision it was trained in.

Mixed precision (`--precision bfloat16`, and `auto` on CPUs with AMX and on AMD Zen 4) is a
training speed-up: the weights stay float32, only the layers' arithmetic runs in bfloat16.
Predicting in bfloat16 too would make every number after training depend on it: the
probabilities `evaluate` reports, the threshold chosen on them, Grad-CAM, and the exports (TFLite's
builtin kernels and ONNX's runtime do not accept bfloat16 at all, so their float32 copies agreed
with a bfloat16 evaluation only to ~1e-3; a SavedModel would serve bfloat16's rounding). So a
run's trained model is rebuilt in float32 with the same weights before anything predicts with it:
evaluation, Grad-CAM, `predict` and every export compute the same float32 numbers.
"""

from __future__ import annotations

from typing import Any

MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


def as_float32(model: Any) -> Any:
    """`model` with every layer computing in float32: itself, or a copy with the same weights.

    A model trained under mixed bfloat16 or float16 computes in that type (see the module
    docstring for why nothing after training should; TFLite and ONNX refuse it: "'tf.Conv2D' op is
    neither a custom op nor a flex op", "Input type mismatch: float16 != bfloat16"). Its weights
    are float32 already, so the copy is rebuilt from the model's own config with the policy set to
    float32, and the weights copied.
    """
    import keras

    if all(layer.dtype_policy.name not in MIXED_POLICIES for layer in model._flatten_layers()):
        return model

    def to_float32(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(
                node.get("config"), dict
            ):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: to_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return "float32" if node in MIXED_POLICIES else node

    copy = keras.saving.deserialize_keras_object(to_float32(keras.saving.serialize_keras_object(model)))
    copy.set_weights(model.get_weights())
    return copy
