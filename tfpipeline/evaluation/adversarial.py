"""Adversarial robustness: the fast gradient sign method (FGSM, Goodfellow et al. 2015).

Each image moves by ε in the direction that increases the model's loss on its true class,
x_adv = clip(x + ε · sign(∇x loss)), in one step. Accuracy and AUC against ε show how far a
detector's decisions are from the images it sees: a model whose accuracy collapses at ε = 2/255
(two grey levels, invisible) is relying on pixel-level patterns an attacker controls.

ε is given as a share of the full pixel range, like 2/255: on images scaled to [0, 1] that is
ε itself; on [-1, 1] it is 2ε; on raw [0, 255] pixels 255ε. Either way it means "ε x 255 grey
levels per pixel", and adversarial images are clipped to the valid pixel range.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from tfpipeline.data.decode import PIXEL_RANGES
from tfpipeline.errors import UserError

DEFAULT_EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
CHUNK = 32


def parse_epsilons(text: str) -> tuple[float, ...]:
    """`1/255,2/255,0.01` -> floats in [0, 1]; UserError naming `--eps` otherwise."""
    values = []
    for part in text.split(","):
        try:
            value = float(Fraction(part.strip()))
        except (ValueError, ZeroDivisionError):
            raise UserError(
                f"--eps takes comma-separated numbers or fractions like 2/255, got '{part}'"
            ) from None
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--eps values are shares of the pixel range in [0, 1], got {part}")
        values.append(value)
    return tuple(values)


def fgsm(
    model: Any, images: np.ndarray, labels: np.ndarray, epsilon: float, scaling: str, positive_index=None
):
    """Adversarial versions of `images` (model inputs, scaled as `scaling`) for their true `labels`.

    Args:
        model: a Keras model (sigmoid: one unit scoring `positive_index`; else softmax).
        images: float32 [N, H, W, C] model inputs.
        labels: class indices [N].
        epsilon: step as a share of the pixel range (see the module docstring).
        scaling: the model's input scaling (`unit`, `symmetric`, `raw`).
        positive_index: for a sigmoid model, the class its unit scores.

    Returns:
        (adversarial images, sign of the gradient) as float32 arrays.

    Raises:
        UserError: the model's output does not depend differentiably on its input.
    """
    import keras
    import tensorflow as tf

    low, high = PIXEL_RANGES[scaling]
    step = epsilon * (high - low)
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.cast(model(x, training=False), tf.float32)
        if out.shape[-1] == 1:
            target = tf.cast(tf.equal(labels, positive_index), tf.float32)[:, None]
            loss = keras.losses.binary_crossentropy(target, out)
        else:
            loss = keras.losses.sparse_categorical_crossentropy(labels, out)
    gradient = tape.gradient(loss, x)
    if gradient is None:
        raise UserError(
            "--adversarial needs gradients of the model's output with respect to its input; "
            "this model has none"
        )
    sign = tf.sign(gradient)
    adversarial = tf.clip_by_value(x + step * sign, low, high)
    return adversarial.numpy(), sign.numpy()


def robustness(
    model: Any,
    images: np.ndarray,
    y_true: np.ndarray,
    epsilons: tuple[float, ...],
    scaling: str,
    rule: Any,
    class_names: list[str],
) -> tuple[list[dict[str, Any]], dict[float, np.ndarray]]:
    """Accuracy and AUC of `model` on FGSM images at every ε.

    Returns:
        (one row per ε: epsilon, grey_levels, accuracy, roc_auc, changed (decisions that flipped
        from the clean ones); probabilities per ε).
    """
    from tfpipeline.evaluation.metrics import classification_metrics
    from tfpipeline.evaluation.run_report import class_probabilities

    rows, probs_by_eps, clean_pred = [], {}, None
    for epsilon in epsilons:
        raw = []
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            adversarial = (
                chunk
                if epsilon == 0
                else fgsm(model, chunk, y_true[start : start + CHUNK], epsilon, scaling, rule.positive_index)[
                    0
                ]
            )
            raw.append(np.asarray(model(adversarial, training=False), dtype=np.float64))
        probs = class_probabilities(np.concatenate(raw), len(class_names), rule.positive_index)
        metrics = classification_metrics(y_true, probs, class_names, rule=rule)
        predicted = rule.predict(probs)
        clean_pred = predicted if clean_pred is None else clean_pred
        rows.append(
            {
                "epsilon": epsilon,
                "grey_levels": round(epsilon * 255, 2),
                "accuracy": metrics["accuracy"],
                "roc_auc": metrics.get("roc_auc"),
                "changed": float(np.mean(predicted != clean_pred)),
            }
        )
        probs_by_eps[epsilon] = probs
    return rows, probs_by_eps


def plot_robustness(rows: list[dict[str, Any]]) -> Any:
    """Accuracy and AUC against ε (in grey levels), with the clean values as the first point."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    levels = [row["grey_levels"] for row in rows]
    ax.plot(levels, [row["accuracy"] for row in rows], "o-", label="accuracy")
    if all(row["roc_auc"] is not None for row in rows):
        ax.plot(levels, [row["roc_auc"] for row in rows], "s--", label="ROC AUC")
    ax.axhline(0.5, color="grey", lw=1, ls=":", label="chance (binary)")
    ax.set_xlabel("FGSM step ε (grey levels of 255)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Robustness to the fast gradient sign attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def plot_adversarial_examples(
    clean: np.ndarray,
    adversarial: np.ndarray,
    titles_clean: list[str],
    titles_adv: list[str],
    epsilon: float,
    scaling: str,
) -> Any:
    """Rows of clean image | perturbation (magnified to be visible) | adversarial image."""
    from tfpipeline.data.decode import unscale_pixels
    from tfpipeline.evaluation.plots import plot_image_grid

    difference = adversarial - clean
    spread = float(np.abs(difference).max()) or 1.0
    perturbation = ((difference / spread) * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
    images, titles = [], []
    for i in range(len(clean)):
        images += [
            unscale_pixels(clean[i], scaling),
            perturbation[i],
            unscale_pixels(adversarial[i], scaling),
        ]
        titles += [titles_clean[i], f"perturbation x{127.5 / spread:.0f}", titles_adv[i]]
    return plot_image_grid(
        np.stack(images),
        titles,
        ncols=3,
        suptitle=f"FGSM at ε = {epsilon * 255:.0f}/255: clean, perturbation, adversarial",
    )
