"""The image figures of `tfpipeline evaluate`: top losses and Grad-CAM, on the pixels the model saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfpipeline.data.decode import unscale_pixels
from tfpipeline.evaluation.run_context import RunContext

GRADCAM_CHUNK = 8  # images per Grad-CAM forward/backward pass (bounds memory for ResNet50)


class Selection:
    """Model inputs of chosen examples of one split, preprocessed by the training pipeline."""

    def __init__(self, split_data, data_config, context: RunContext, name: str):
        self.split, self.config, self.context, self.name = split_data, data_config, context, name

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Scaled float32 images (what the model saw) for `indices`, in the order given."""
        from tfpipeline.data.pipeline import build_dataset

        indices = np.asarray(indices, dtype=np.int64)
        mask = np.zeros(len(self.split), dtype=bool)
        mask[indices] = True
        dataset = build_dataset(
            self.split.subset(mask),
            self.config,
            scaling=self.context.scaling,
            training=False,
            num_classes=self.context.num_classes,
            label_mode="int",
            cache_name=f"{self.name}-selection",
        )
        images = np.concatenate([batch for batch, _ in dataset.as_numpy_iterator()])
        position = {int(i): k for k, i in enumerate(np.flatnonzero(mask))}  # subset keeps split order
        return images[[position[int(i)] for i in indices]]


def title_of(names, y_true, probs, y_pred, i: int) -> str:
    pred = int(y_pred[i])
    return f"true: {names[int(y_true[i])]}\npred: {names[pred]} (p={probs[i, pred]:.2f})"


def top_losses_figure(selection: Selection, y_true, probs, y_pred, count: int, out_dir: Path) -> Path:
    from tfpipeline.evaluation.metrics import top_losses
    from tfpipeline.evaluation.plots import plot_image_grid, save_figure

    order = top_losses(y_true, probs, len(y_true))
    wrong = [int(i) for i in order if y_pred[i] != y_true[i]]
    if wrong:
        chosen = wrong[:count]
        heading = f"Top losses: {len(chosen)} most confidently wrong of {len(wrong)} misclassified"
    else:
        chosen = [int(i) for i in order[:count]]
        heading = "Top losses: nothing misclassified; highest-loss images shown"
    names = selection.context.class_names
    images = unscale_pixels(selection.images(np.array(chosen)), selection.context.scaling)
    titles = [title_of(names, y_true, probs, y_pred, i) for i in chosen]
    figure = plot_image_grid(images, titles, ncols=min(4, len(chosen)), suptitle=heading)
    return save_figure(figure, out_dir / "top_losses.png")


def gradcam_class_targets(y_pred: np.ndarray, positive_index: int | None) -> np.ndarray:
    """Class indices in Grad-CAM's convention: for one sigmoid unit, 1 = the positive class."""
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if positive_index is None:
        return y_pred
    return (y_pred == positive_index).astype(np.int64)


def balanced_sample(y_true: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to `count` random indices taking the classes in turn (true class 0, 1, ..., 0, 1, ...)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_true))
    by_class = [list(order[y_true[order] == c]) for c in np.unique(y_true)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(y_true)):
        for members in by_class:
            if members and len(chosen) < count:
                chosen.append(int(members.pop(0)))
    return np.array(chosen, dtype=np.int64)


def gradcam_figure(selection: Selection, model, y_true, probs, y_pred, count: int, out_dir: Path) -> Path:
    from tfpipeline.evaluation.gradcam import find_last_conv_layer, gradcam_heatmaps, plot_gradcam_grid
    from tfpipeline.evaluation.plots import save_figure
    from tfpipeline.models import get_spec

    context = selection.context
    chosen = balanced_sample(y_true, count, context.config.data.seed)
    inputs = selection.images(chosen)
    targets = gradcam_class_targets(y_pred[chosen], context.positive_index)
    path = get_spec(context.config.model.name).gradcam_layer or find_last_conv_layer(model)
    heatmaps = np.concatenate(
        [
            gradcam_heatmaps(
                model, inputs[s : s + GRADCAM_CHUNK], targets[s : s + GRADCAM_CHUNK], layer_path=path
            )
            for s in range(0, len(chosen), GRADCAM_CHUNK)
        ]
    )
    titles = [title_of(context.class_names, y_true, probs, y_pred, int(i)) for i in chosen]
    figure = plot_gradcam_grid(
        unscale_pixels(inputs, context.scaling),
        heatmaps,
        titles,
        ncols=2,
        suptitle=f"Grad-CAM of the predicted class, {len(chosen)} {selection.name} images "
        f"(layer {'/'.join(path)})",
    )
    return save_figure(figure, out_dir / "gradcam.png")


def synthesized_fakes_figure(
    split, config, class_names, scaling: str, out_path: Path, count: int = 12
) -> Path:
    """A grid of self-blended fakes made from real training faces, each above its change map.

    Shows what `--synth-fakes` trains on (the same generator and seed), so a user can judge it.
    """
    import tensorflow as tf

    from tfpipeline.data.blend import SelfBlend
    from tfpipeline.data.pipeline import decoded_images, pixel_array
    from tfpipeline.data.regions import REGIONS
    from tfpipeline.evaluation.plots import plot_image_grid, save_figure

    fake = class_names.index(config.augment.fake_class)
    real_rows = np.flatnonzero(split.labels != fake)[:count]
    keep = np.zeros(len(split), bool)
    keep[real_rows] = True
    subset = split.subset(keep)
    faces = pixel_array(subset, config)
    if faces is None:  # a streamed split: decode the few faces shown
        faces = np.stack([image for image, _ in decoded_images(subset, config).as_numpy_iterator()])
    faces = faces.astype(np.float32)
    blend = SelfBlend(1.0, real_index=1 - fake, fake_index=fake, seed=config.seed + 7)
    made, _, regions = blend(tf.constant(faces), tf.fill([len(faces)], 1 - fake))
    made = made.numpy()
    change = np.abs(made - faces).max(axis=-1, keepdims=True)
    change = np.repeat(change / max(float(change.max()), 1.0) * 255.0, 3, axis=-1)
    images, titles = [], []
    for i in range(len(faces)):
        edited = [name for name, on in zip(REGIONS, regions.numpy()[i], strict=True) if on > 0]
        images += [made[i].clip(0, 255).astype(np.uint8), change[i].astype(np.uint8)]
        titles += [", ".join(edited) or "random convex region", "where pixels changed"]
    figure = plot_image_grid(
        np.stack(images),
        titles,
        ncols=6,
        suptitle="Self-blended fakes made from real training faces (--synth-fakes)",
    )
    return save_figure(figure, out_path)
