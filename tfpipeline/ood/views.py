"""What a detector looks at: one forward pass giving a model's output, embedding and head input.

:func:`view_model` wraps a trained classifier into a Keras model whose single float32 output
concatenates, per image,

- the model's own output (`units` columns: one sigmoid unit for two classes, K softmax columns),
- its embedding (`embedding` columns): the channel means of the registry's `ood_taps` feature
  maps (fast_resnet: the stem and every group's output; others: their pooling layers) and the
  registry's `embedding_layer` (e.g. small_cnn's `dense3`, fast_resnet's `pool`), each block
  scaled to unit length, then the log of each block's length (one column per block), and
- the input of its `output` layer when that is not the embedding itself (fast_resnet: the
  scaled logits before the final activation; `head` columns).

The taps matter: a classifier's last features are trained to ignore what does not decide the
class, so blurry, upsampled or synthetic images can land right beside the class means there
(measured: a CIPLAB detector's final embedding scored CIFAR-10 photos as *more* typical than its
own validation faces, AUROC 0.03). Early feature maps keep the image statistics (sharpness,
texture, colour) that tell such inputs apart, in the spirit of Lee et al. (2018)'s feature
ensemble. Each block is split into its direction (unit length) and the log of its length
because activation *strength* varies most among training images, so a flat, weakly activating
input (an upsampled 8x8 digit) sits along the covariance's widest axis and looks typical; apart,
the direction says which features fire and the length how strongly. Measured on the CIPLAB
detector (AUROC vs CIFAR-10 / digits): final embedding 0.030 / 0.011; raw taps 0.439 / 0.077;
unit blocks plus log lengths 0.963 / 0.851.

A region-crop model (`--region-crops`) runs its network on four crops per image, so its feature
maps hold four rows per image; a tap's channel means are then taken over every position of the
image's four crops (the mean of the crops' means, the crops being the same size). Its embedding,
`region_features`, is the four crops' pooled features side by side. Measured on `fake_faces` v4
(notebook 1's run, no test-time flip, AUROC vs 500 CIFAR-10 photos / 1,797 digits, share of them
accepted at the threshold accepting 95 % of the validation faces): the embedding alone, as
shipped before taps covered region crops, 0.222 / 0.120 (94.8 % / 100 % accepted); with the taps
pooled over the crops, unit blocks and log lengths, 0.978 / 0.971 (11.4 % / 18.7 %). Keeping each
crop's taps as separate blocks (4x the columns) measured 0.953 / 0.952, and the stem alone run
on the whole image 0.833 / 0.731.

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
LENGTH_EPSILON = 1e-6  # keeps an all-zero block (a dead tap) finite


@dataclass(frozen=True)
class ViewLayout:
    """Column widths of a view model's output.

    Attributes:
        units: the model's output width (1: a binary sigmoid; K: softmax).
        embedding: width of the embedding.
        head: width of the head layer's input when it is not the embedding (0 otherwise).
        embedding_layer: the layer the embedding is read from.
        taps: the feature maps whose channel means lead the embedding columns (() in detectors
            fitted before taps existed, which keep working as they were fitted).
    """

    units: int
    embedding: int
    head: int
    embedding_layer: str
    taps: tuple[str, ...] = ()

    def split(self, views: Any) -> tuple[Any, Any, Any]:
        """(output [N, units], embedding [N, D], head input [N, H]) columns of `views`."""
        output = views[:, : self.units]
        embedding = views[:, self.units : self.units + self.embedding]
        head = views[:, self.units + self.embedding :] if self.head else embedding
        return output, embedding, head


def default_taps(model: keras.Model, config: ModelConfig) -> tuple[str, ...]:
    """The feature maps a new detector taps: the registry's `ood_taps` present in `model`, or
    the model's 2-D pooling layers."""
    from tfpipeline.models import get_spec

    spec = get_spec(config.name)
    present = [layer.name for layer in model.layers]
    if spec.ood_taps is not None:
        wanted = set(spec.ood_taps(config))
        return tuple(name for name in present if name in wanted)
    pools = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    return tuple(layer.name for layer in model.layers if isinstance(layer, pools))


def _taps(model: keras.Model, embedding_layer: str, taps: tuple[str, ...]) -> tuple[Any, Any, Any, Any, list]:
    """(inputs, output, embedding, head input, tapped maps) tensors of one clean graph of `model`.

    A Sequential model reloaded from disk has layers with several graph nodes, so its layers are
    re-applied to a fresh input; a functional model's own graph is used as it is.
    """
    names = {layer.name for layer in model.layers}
    for needed in (embedding_layer, HEAD_LAYER, *taps):
        if needed not in names:
            raise UserError(
                f"{model.name}: no layer '{needed}' to read out-of-domain features from "
                f"(layers: {', '.join(sorted(names))})"
            )
    if isinstance(model, keras.Sequential):
        first = model.inputs[0]
        inputs = keras.Input(shape=first.shape[1:], dtype=first.dtype, name="image")
        x, embedding, head, tapped = inputs, None, None, {}
        for layer in model.layers:
            if layer.name == HEAD_LAYER:
                head = x
            x = layer(x)
            if layer.name == embedding_layer:
                embedding = x
            if layer.name in taps:
                tapped[layer.name] = x
        return inputs, x, embedding, head, [tapped[name] for name in taps]
    return (
        model.inputs[0] if len(model.inputs) == 1 else model.inputs,
        model.outputs[0],
        model.get_layer(embedding_layer).output,
        model.get_layer(HEAD_LAYER).input,
        [model.get_layer(name).output for name in taps],
    )


def view_model(
    model: keras.Model, config: ModelConfig, taps: tuple[str, ...] | None = None
) -> tuple[keras.Model, ViewLayout]:
    """The view model of a trained classifier (see the module docstring).

    Args:
        model: the plain classifier (`load_run_model`'s, or `main_model` of an aux-head model).
        config: its ModelConfig; the registry says which layer is the embedding.
        taps: the feature maps to tap; default :func:`default_taps` (a fitted detector passes
            its own, so it scores exactly the columns it was fitted on).

    Returns:
        (a Keras model [N, H, W, C] -> float32 [N, units + embedding + head], its layout).

    Raises:
        UserError: the model has no such layers.
    """
    from tfpipeline.data.regions import REGIONS
    from tfpipeline.models import get_spec
    from tfpipeline.models.region_crops import region_crop_layer

    name = get_spec(config.name).embedding(config)
    taps = default_taps(model, config) if taps is None else tuple(taps)
    inputs, output, embedding, head, maps = _taps(model, name, taps)
    # With taps the embedding columns are no longer the head's input, so the head gets its own.
    separate_head = head is not embedding or bool(taps)
    features = [embedding]
    if taps:
        means = [
            keras.layers.GlobalAveragePooling2D(dtype="float32", name=f"ood_tap{i}")(feature_map)
            for i, feature_map in enumerate(maps)
        ]
        if region_crop_layer(model) is not None:  # [N * 4, C] rows: pool each image's four crops
            crops = len(REGIONS)
            means = [keras.ops.mean(keras.ops.reshape(m, (-1, crops, m.shape[-1])), axis=1) for m in means]
        blocks = [keras.ops.cast(block, "float32") for block in (*means, embedding)]
        lengths = [keras.ops.norm(block, axis=-1, keepdims=True) for block in blocks]
        features = [block / (length + LENGTH_EPSILON) for block, length in zip(blocks, lengths, strict=True)]
        features.append(keras.ops.log(keras.ops.concatenate(lengths, axis=-1) + LENGTH_EPSILON))
    parts = [output, *features] + ([head] if separate_head else [])
    as_float = [
        keras.layers.Identity(dtype="float32", name=f"ood_view{i}")(part) for i, part in enumerate(parts)
    ]
    flat = keras.layers.Concatenate(dtype="float32", name="ood_views")(as_float)
    layout = ViewLayout(
        units=int(output.shape[-1]),
        embedding=sum(int(f.shape[-1]) for f in features),
        head=int(head.shape[-1]) if separate_head else 0,
        embedding_layer=name,
        taps=taps,
    )
    return keras.Model(inputs, flat, name=f"{model.name}_ood_views"), layout


def head_linear(model: keras.Model, layout: ViewLayout) -> tuple[np.ndarray, np.ndarray]:
    """(kernel [H, units], bias [units]) turning the head input into the model's logits.

    A Dense `output` layer (small_cnn, keras_cnn, resnet50_head) computes its logits from its
    input with its own kernel and bias; an Activation `output` layer (fast_resnet) receives the
    logits themselves, so the map is the identity.

    Raises:
        UserError: the output is no such layer (a region-crop model averages four region
            probabilities: it has no logits for the energy score).
    """
    layer = model.get_layer(HEAD_LAYER)
    if not isinstance(layer, (keras.layers.Dense, keras.layers.Activation)):
        raise UserError(
            f"--ood energy needs the model's logits, and {model.name}'s output ({type(layer).__name__}) has "
            "none; use --ood mahalanobis or msp"
        )
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
