"""Grad-CAM class-activation heatmaps for Keras 3 models, including nested backbones.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the last convolution's output by the
spatial mean of the class score's gradient, keeps the positive part of the weighted sum and
upsamples it to the input size.

The conv output and the prediction must come from one forward pass recorded by a
GradientTape. A single `keras.Model(model.inputs, [conv.output, model.output])` only works when
the conv layer lives directly in the model's own graph, so the forward pass is rebuilt along the
path of nested models that leads to the conv layer (see :func:`find_last_conv_layer`):

* a `keras.Sequential` is run layer by layer;
* a functional model whose conv layer is its own is wrapped as `Model(inputs, [conv, output])`,
  which keeps skip connections (ResNet's `Add`) intact;
* a functional model with the path through a nested model is split at that model's call into
  `prefix` (inputs -> nested input) and `head` (nested output -> outputs), both built from the
  model's own intermediate tensors, and the nested model is handled recursively in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tfpipeline.evaluation.plots import _displayable
from tfpipeline.models.precision import as_float32
from tfpipeline.models.region_crops import region_crop_layer

CONV_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)


def find_last_conv_layer(model: keras.Model) -> tuple[str, ...]:
    """Path of layer names from `model` down to its last 2-D convolution (4-D output).

    Nested models are searched too, last layer first: e.g. `("resnet50", "conv5_block3_3_conv")`
    for a head around a ResNet50 backbone, `("conv2d_1",)` for a Sequential CNN.
    """
    path = _search(model)
    if path is None:
        raise ValueError(f"model '{model.name}' has no 2-D convolution layer for Grad-CAM")
    return tuple(path)


def gradcam_heatmaps(
    model: keras.Model,
    images: Any,
    class_index: int | Sequence[int] | None = None,
    *,
    layer_path: Sequence[str] | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps, shape (N, H, W), each scaled to [0, 1] (all zero when no evidence).

    Args:
        model: a Keras classifier with a softmax (N, K) or sigmoid (N, 1) output.
        images: (N, H, W, C) float batch, already preprocessed as the model expects.
        class_index: class to explain, one for all images or one per image; None explains the
            predicted class. For a single sigmoid output, class 1 uses the positive score and
            class 0 its complement.
        layer_path: path to the conv layer; default :func:`find_last_conv_layer`.

    The class score differentiated is the log-probability: its gradient is the probability's
    gradient divided by the (per-image) probability, so the normalised heatmap is the same but
    does not vanish numerically for confident predictions. A model trained in mixed precision is
    explained through its float32 copy (:func:`~tfpipeline.models.precision.as_float32`), the
    model whose predictions evaluate reports.
    """
    model = as_float32(model)
    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    if images.shape.rank != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {tuple(images.shape)}")
    if not model.built:
        model(images[:1], training=False)
    path = tuple(layer_path) if layer_path else find_last_conv_layer(model)
    with tf.GradientTape() as tape:
        # Watch the input so the whole pass is recorded even through frozen (non-trainable) layers.
        tape.watch(images)
        conv_out, preds = _forward(model, path, images)
        preds = tf.reshape(_first(preds), (tf.shape(images)[0], -1))
        score = _class_log_prob(preds, class_index)
    grads = tape.gradient(score, conv_out)
    if grads is None:
        raise ValueError(f"the model output does not depend on layer {'/'.join(path)}")
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv_out, axis=-1, keepdims=True))
    crops = region_crop_layer(model)
    if crops is not None:  # one map per region crop, placed back where the crop came from
        cam = tf.image.resize(cam, (crops.size, crops.size), method="bilinear")[..., 0].numpy()
        cam = crops.paste(cam, *images.shape[1:3])
    else:
        cam = tf.image.resize(cam, tuple(images.shape[1:3]), method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    return np.clip(cam, 0.0, 1.0).astype(np.float32)


def overlay_heatmap(image: Any, heatmap: Any, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap (coloured with `cmap`) over an image; returns RGB uint8 (H, W, 3).

    `image` is (H, W), (H, W, 1) or (H, W, 3), uint8 or float (floats outside [0, 1] are
    stretched to it); the heatmap is resized to the image when their sizes differ.
    """
    image = _displayable(np.asarray(image))
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != image.shape[:2]:
        heat = tf.image.resize(heat[..., None], image.shape[:2]).numpy()[..., 0]
    colour = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * image + alpha * colour
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def plot_gradcam_grid(
    images: Any,
    heatmaps: Any,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 2,
    alpha: float = 0.4,
    suptitle: str = "Grad-CAM",
) -> Figure:
    """Each image next to its Grad-CAM overlay, `ncols` pairs per row, with a heatmap colourbar."""
    images = np.asarray(images)
    heatmaps = np.asarray(heatmaps)
    n = len(images)
    if n == 0 or len(heatmaps) != n or (titles is not None and len(titles) != n):
        raise ValueError("plot_gradcam_grid needs as many heatmaps (and titles) as images, at least one")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(5.0 * ncols + 0.8, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, 2 * ncols, squeeze=False)
    for i in range(nrows * ncols):
        left, right = axes[i // ncols, 2 * (i % ncols)], axes[i // ncols, 2 * (i % ncols) + 1]
        left.axis("off")
        right.axis("off")
        if i >= n:
            continue
        image = _displayable(images[i])
        if image.ndim == 3 and image.shape[-1] == 1:
            left.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            left.imshow(image)
        right.imshow(overlay_heatmap(images[i], heatmaps[i], alpha=alpha))
        left.set_title(str(titles[i]) if titles is not None else f"image {i}", fontsize=8)
        right.set_title("Grad-CAM overlay", fontsize=8)
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    fig.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.6, label="Grad-CAM (0 = none, 1 = strongest)")
    fig.suptitle(suptitle)
    return fig


def conv_layer_paths(model: keras.Model) -> list[tuple[str, ...]]:
    """Paths (as for `layer_path`) of every 2-D convolution of `model`, nested ones included,
    in forward order."""
    paths: list[tuple[str, ...]] = []

    def walk(layer: Any, prefix: tuple[str, ...]) -> None:
        for child in getattr(layer, "layers", []):
            if isinstance(child, CONV_TYPES) and _output_rank(child) in (None, 4):
                paths.append((*prefix, child.name))
            elif getattr(child, "layers", None):
                walk(child, (*prefix, child.name))

    walk(model, ())
    return paths


def layer_output(model: keras.Model, layer_path: Sequence[str], images: Any) -> np.ndarray:
    """The output of the layer at `layer_path` (see :func:`find_last_conv_layer`) for `images`."""
    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    captured, _ = _forward(model, tuple(layer_path), x)
    return np.asarray(captured)


# ---------------------------------------------------------------------------------------------


def _search(layer: Any) -> list[str] | None:
    for child in reversed(getattr(layer, "layers", [])):
        if isinstance(child, CONV_TYPES) and _output_rank(child) in (None, 4):
            return [child.name]
        if getattr(child, "layers", None):
            inner = _search(child)
            if inner is not None:
                return [child.name, *inner]
    return None


def _output_rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None  # an unbuilt Sequential's layers have no symbolic output yet


def _first(value: Any) -> Any:
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value


def _single(tensors: Any) -> Any:
    return tensors[0] if isinstance(tensors, (list, tuple)) and len(tensors) == 1 else tensors


def _forward(model: Any, path: Sequence[str], x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(target conv output, model output) from one eager forward pass of `model` on `x`."""
    target = model.get_layer(path[0])
    rest = path[1:]
    if isinstance(model, keras.Sequential):
        captured = None
        for layer in model.layers:
            if layer is target:
                if rest:
                    captured, x = _forward(layer, rest, x)
                else:
                    x = captured = layer(x, training=False)
            else:
                x = layer(x, training=False)
        return captured, x
    if not rest:
        grad_model = keras.Model(_single(model.inputs), [target.output, _first(model.outputs)])
        conv_out, out = grad_model(x, training=False)
        return conv_out, out
    node = _node_in(model, target)
    prefix_out = _single(node.input_tensors)
    model_in = _single(model.inputs)
    if prefix_out is not model_in:
        x = keras.Model(model_in, prefix_out)(x, training=False)
    captured, y = _forward(target, rest, x)
    head = keras.Model(_single(node.output_tensors), _single(model.outputs))
    return captured, head(y, training=False)


def _node_in(model: Any, layer: Any) -> Any:
    """The call of `layer` that belongs to `model`'s graph (a nested model may be reused elsewhere)."""
    own = {id(t) for op in model.operations for n in op._inbound_nodes for t in n.output_tensors}
    for node in layer._inbound_nodes:
        if node.output_tensors and all(id(t) in own for t in node.output_tensors):
            return node
    if len(layer._inbound_nodes) == 1:
        return layer._inbound_nodes[0]
    raise ValueError(f"cannot locate the call of '{layer.name}' inside '{model.name}' for Grad-CAM")


def _class_log_prob(preds: tf.Tensor, class_index: int | Sequence[int] | None) -> tf.Tensor:
    n = tf.shape(preds)[0]
    eps = 1e-7
    if preds.shape[-1] == 1:  # sigmoid: class 1 = p, class 0 = 1 - p
        p = preds[:, 0]
        if class_index is None:
            positive = p >= 0.5
        else:
            positive = tf.broadcast_to(tf.constant(np.asarray(class_index) == 1), (n,))
        return tf.reduce_sum(tf.math.log(tf.where(positive, p, 1.0 - p) + eps))
    if class_index is None:
        index = tf.argmax(preds, axis=-1, output_type=tf.int32)
    else:
        index = tf.broadcast_to(tf.constant(np.asarray(class_index, dtype=np.int32)), (n,))
    chosen = tf.gather(preds, index, axis=1, batch_dims=1)
    return tf.reduce_sum(tf.math.log(chosen + eps))
