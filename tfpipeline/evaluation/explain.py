"""`tfpipeline explain RUN`: what each layer of an image model learned, as pictures.

- `filters.png`: the first convolution's filters, one tile per filter (RGB filters shown in
  colour, each tile stretched to its own range);
- `feature_maps_<layer>.png`, for every chosen layer (default: every convolution): the first
  channels of its output for a few validation images;
- `top_images.png`: for the channels of the deepest convolution that vary most across images,
  the validation images that activate each channel most (mean over positions).

Every figure is titled with the layer's name and output shape. Pictures come from the run's
own pipeline (its preprocessing, its validation split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tfpipeline.data.decode import unscale_pixels
from tfpipeline.errors import UserError


@dataclass
class Explanation:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)


def plot_filters(kernel: np.ndarray, name: str, limit: int = 64) -> Figure:
    """Tiles of a conv kernel [kh, kw, in, out]: colour when in == 3, else input channel 0."""
    kernel = np.asarray(kernel, dtype=np.float32)
    count = min(kernel.shape[-1], limit)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    figure = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= count:
            continue
        tile = kernel[..., i] if kernel.shape[2] == 3 else kernel[:, :, 0, i]
        low, high = float(tile.min()), float(tile.max())
        tile = (tile - low) / (high - low) if high > low else np.zeros_like(tile)
        ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest")
    figure.suptitle(
        f"{name}: {kernel.shape[-1]} filters of {kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}"
    )
    return figure


def plot_feature_maps(activations: np.ndarray, images: np.ndarray, name: str, channels: int = 8) -> Figure:
    """For each image: the image, then its first `channels` maps of one layer."""
    n, shown = len(images), min(channels, activations.shape[-1])
    figure = Figure(figsize=(1.3 * (shown + 1), 1.4 * n + 0.6), layout="constrained")
    axes = figure.subplots(n, shown + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].squeeze(), cmap="gray" if images[i].shape[-1] == 1 else None)
        for c in range(shown):
            axes[i, c + 1].imshow(activations[i, :, :, c], cmap="viridis")
            if i == 0:
                axes[i, c + 1].set_title(f"ch {c}", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    figure.suptitle(f"{name}: output {tuple(activations.shape[1:])} (first {shown} channels)")
    return figure


def plot_top_images(
    images: np.ndarray, strength: np.ndarray, name: str, shape, channels: int, top: int
) -> Figure:
    """Rows of the images that activate each of the most varying channels most."""
    chosen = np.argsort(-strength.std(axis=0))[:channels]
    figure = Figure(figsize=(1.4 * top + 0.8, 1.5 * len(chosen) + 0.6), layout="constrained")
    axes = figure.subplots(len(chosen), top, squeeze=False)
    for row, channel in enumerate(chosen):
        best = np.argsort(-strength[:, channel])[:top]
        for k, index in enumerate(best):
            ax = axes[row, k]
            ax.imshow(images[index].squeeze(), cmap="gray" if images[index].shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(f"ch {channel}", fontsize=8)
            ax.set_title(f"{strength[index, channel]:.2f}", fontsize=7)
    figure.suptitle(
        f"{name}: output {tuple(shape[1:])}; images activating each channel most (mean over positions)"
    )
    return figure


def explain_run(
    run_path: str | Path,
    *,
    layers: Sequence[str] = (),
    images: int = 3,
    channels: int = 8,
    top: int = 6,
    max_images: int = 512,
    out: str | Path | None = None,
) -> Explanation:
    """Write the explain figures of a run (see the module docstring).

    Args:
        layers: layer names (last part of a path) to show feature maps of; default every conv.
        images: validation images in the feature-map figures.
        channels: channels per feature map figure, and rows of the top-images figure.
        top: images per channel in the top-images figure.
        max_images: validation images searched for the top activations.
        out: output folder (default RUN/explain).

    Raises:
        UserError: not a run folder, a model without convolutions, or an unknown layer name.
    """
    from tfpipeline.data import load_split
    from tfpipeline.evaluation.gradcam import conv_layer_paths, layer_output
    from tfpipeline.evaluation.plots import save_figure
    from tfpipeline.evaluation.run_context import load_run_model, open_run

    context = open_run(run_path)
    model = load_run_model(context)
    paths = conv_layer_paths(model)
    if not paths:
        raise UserError(f"{context.run.path}: the model has no convolution layers to explain")
    if layers:
        known = {p[-1]: p for p in paths}
        missing = [name for name in layers if name not in known]
        if missing:
            raise UserError(
                f"--layers {', '.join(missing)}: not convolutions of the model ({', '.join(known)})"
            )
        chosen = [known[name] for name in layers]
    else:
        chosen = paths
    split = load_split(context.config.data, "val", scaling=context.scaling, class_names=context.class_names)
    inputs = []
    for batch, _ in split.dataset:
        inputs.append(np.asarray(batch))
        if sum(len(b) for b in inputs) >= max_images:
            break
    inputs = np.concatenate(inputs)[:max_images]
    shown = unscale_pixels(inputs, context.scaling)
    out_dir = Path(out) if out else context.run.path / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Explanation(out_dir=out_dir, layers=["/".join(p) for p in chosen])

    first = _layer(model, paths[0])
    result.files["filters"] = save_figure(
        plot_filters(first.kernel.numpy(), "/".join(paths[0])), out_dir / "filters.png"
    )
    for path in chosen:
        maps = layer_output(model, path, inputs[:images])
        result.files[f"feature_maps_{path[-1]}"] = save_figure(
            plot_feature_maps(maps, shown[:images], "/".join(path), channels),
            out_dir / f"feature_maps_{path[-1]}.png",
        )
    deepest = paths[-1]
    strength = np.concatenate(
        [
            layer_output(model, deepest, inputs[s : s + 32]).mean(axis=(1, 2))
            for s in range(0, len(inputs), 32)
        ]
    )
    shape = layer_output(model, deepest, inputs[:1]).shape
    result.files["top_images"] = save_figure(
        plot_top_images(shown, strength, "/".join(deepest), shape, channels, top), out_dir / "top_images.png"
    )
    return result


def _layer(model, path):
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer
