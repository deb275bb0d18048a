"""What a detector looks at: one forward pass giving a model's output, embedding and head input.

:func:`view_model` wraps a trained classifier into a Keras model whose single float32 output
concatenates, per image,

- the model's own output (`units` columns: one sigmoid unit for two classes, K softmax columns),
- its embedding (the registry's `embedding_layer`, e.g. small_cnn's `dense3`, fast_resnet's
  `pool`; `embedding` columns), and
- the input of its `output` layer when that is not the embedding itself (fast_resnet: the
  scaled logits before the final activation; `head` columns).

One flat output lets the run's test-time augmentation (:func:`~tfpipeline.models.tta.with_tta`)
average every view exactly as it averages the probabilities, so a detector scores the same
views the served probabilities come from, in the same forward passes. :class:`ViewLayout`
splits the columns again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError

HEAD_LAYER = "output"  # every registered model names its classification layer so


@dataclass(frozen=True)
class ViewLayout:
    """Column widths of a view model's output.

    Attributes:
        units: the model's output width (1: a binary sigmoid; K: softmax).
        embedding: width of the embedding.
        head: width of the head layer's input when it is not the embedding (0 otherwise).
        embedding_layer: the layer the embedding is read from.
    """

    units: int
    embedding: int
    head: int
    embedding_layer: str

    def split(self, views: Any) -> tuple[Any, Any, Any]:
        """(output [N, units], embedding [N, D], head input [N, H]) columns of `views`."""
        output = views[:, : self.units]
        embedding = views[:, self.units : self.units + self.embedding]
        head = views[:, self.units + self.embedding :] if self.head else embedding
        return output, embedding, head


def _taps(model: keras.Model, embedding_layer: str) -> tuple[Any, Any, Any, Any]:
    """(inputs, output, embedding, head input) tensors of one clean graph of `model`.

    A Sequential model reloaded from disk has layers with several graph nodes, so its layers are
    re-applied to a fresh input; a functional model's own graph is used as it is.
    """
    names = {layer.name for layer in model.layers}
    for needed in (embedding_layer, HEAD_LAYER):
        if needed not in names:
            raise UserError(
                f"{model.name}: no layer '{needed}' to read out-of-domain features from "
                f"(layers: {', '.join(sorted(names))})"
            )
    if isinstance(model, keras.Sequential):
        first = model.inputs[0]
        inputs = keras.Input(shape=first.shape[1:], dtype=first.dtype, name="image")
        x, embedding, head = inputs, None, None
        for layer in model.layers:
            if layer.name == HEAD_LAYER:
                head = x
            x = layer(x)
            if layer.name == embedding_layer:
                embedding = x
        return inputs, x, embedding, head
    return (
        model.inputs[0] if len(model.inputs) == 1 else model.inputs,
        model.outputs[0],
        model.get_layer(embedding_layer).output,
        model.get_layer(HEAD_LAYER).input,
    )


def view_model(model: keras.Model, config: ModelConfig) -> tuple[keras.Model, ViewLayout]:
    """The view model of a trained classifier (see the module docstring).

    Args:
        model: the plain classifier (`load_run_model`'s, or `main_model` of an aux-head model).
        config: its ModelConfig; the registry says which layer is the embedding.

    Returns:
        (a Keras model [N, H, W, C] -> float32 [N, units + embedding + head], its layout).

    Raises:
        UserError: the model has no such layers.
    """
    from tfpipeline.models import get_spec

    name = get_spec(config.name).embedding(config)
    inputs, output, embedding, head = _taps(model, name)
    parts = [output, embedding] + ([head] if head is not embedding else [])
    as_float = [
        keras.layers.Identity(dtype="float32", name=f"ood_view{i}")(part) for i, part in enumerate(parts)
    ]
    flat = keras.layers.Concatenate(dtype="float32", name="ood_views")(as_float)
    layout = ViewLayout(
        units=int(output.shape[-1]),
        embedding=int(embedding.shape[-1]),
        head=int(head.shape[-1]) if head is not embedding else 0,
        embedding_layer=name,
    )
    return keras.Model(inputs, flat, name=f"{model.name}_ood_views"), layout


def head_linear(model: keras.Model, layout: ViewLayout) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [H, units], bias [units]) turning the head input into the model's logits.

    A Dense `output` layer (small_cnn, keras_cnn, resnet50_head) computes its logits from its
    input with its own kernel and bias; an Activation `output` layer (fast_resnet) receives the
    logits themselves, so the map is the identity.
    """
    layer = model.get_layer(HEAD_LAYER)
    width = layout.head or layout.embedding
    if isinstance(layer, keras.layers.Dense):
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32)
        bias = (
            np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float32)
            if layer.use_bias
            else np.zeros(layout.units, np.float32)
        )
        return kernel, bias
    return np.eye(width, layout.units, dtype=np.float32), np.zeros(layout.units, np.float32)
