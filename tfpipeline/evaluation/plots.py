"""Evaluation figures as `matplotlib.figure.Figure` objects (no pyplot, no global state).

Every function returns a new Figure; write it with :func:`save_figure` or turn it into PNG
bytes (for TensorBoard) with :func:`figure_to_png_bytes`. Curves come from scikit-learn.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from tfpipeline.evaluation.metrics import expected_calibration_error, reliability_table

DEFAULT_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auc", "learning_rate")
DPI = 120


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as an image (format from the suffix, dpi 120, tight bbox) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _close(fig)
    return path


def figure_to_png_bytes(fig: Figure) -> bytes:
    """PNG-encoded bytes of `fig` (e.g. for `tf.summary.image` after `tf.image.decode_png`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def plot_learning_curves(
    history: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    title: str = "Learning curves",
    planned_epochs: int | None = None,
) -> Figure:
    """One subplot per metric present in `history`: train (`m`) and validation (`val_m`) per epoch.

    `history` is a pandas DataFrame (e.g. a CSVLogger file) or a dict of lists (Keras
    `History.history`); an `epoch` column, when present, gives the x values (shown 1-based).
    `learning_rate`, when logged, gets its own panel (the schedule as it ran). With
    `planned_epochs` longer than the history, every panel marks where early stopping ended it.
    """
    columns = _history_columns(history)
    present = [m for m in metrics if m in columns or f"val_{m}" in columns]
    if not present:
        raise ValueError(f"none of {', '.join(metrics)} in the history (columns: {', '.join(columns)})")
    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    epochs_run = max(len(values) for values in columns.values())
    stopped = planned_epochs is not None and 0 < epochs_run < planned_epochs
    for ax, metric in zip(axes, present, strict=False):
        # The learning rate is one schedule, not a train/val pair.
        curves = (
            ((metric, "learning rate", "-"),)
            if metric == "learning_rate"
            else ((metric, "train", "--"), (f"val_{metric}", "val", "-"))
        )
        for key, label, style in curves:
            if key in columns:
                values = np.asarray(columns[key], dtype=float)
                ax.plot(_epochs(columns, len(values)), values, style, marker=".", label=label)
        if f"val_{metric}" in columns:
            values = np.asarray(columns[f"val_{metric}"], dtype=float)
            best = int(np.nanargmin(values) if metric == "loss" else np.nanargmax(values))
            ax.axvline(_epochs(columns, len(values))[best], color="grey", lw=0.8, ls=":", label="best val")
        if stopped:
            ax.axvline(_epochs(columns, epochs_run)[-1], color="tab:red", lw=0.8, ls="--", label="early stop")
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(present) :]:
        fig.delaxes(ax)
    if stopped:
        title = f"{title} (early stopping after epoch {epochs_run} of {planned_epochs})"
    fig.suptitle(title)
    return fig


def plot_compare_runs(histories: Mapping[str, Any], metric: str) -> Figure:
    """Overlay several runs for one metric: one colour per run, train dashed, validation solid."""
    if not histories:
        raise ValueError("plot_compare_runs needs at least one history")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    colours = _colours(len(histories))
    plotted = False
    for colour, (label, history) in zip(colours, histories.items(), strict=True):
        columns = _history_columns(history)
        labelled = False  # one legend entry per run, whichever of its curves comes first
        for key, style in ((f"val_{metric}", "-"), (metric, "--")):
            if key in columns:
                values = np.asarray(columns[key], dtype=float)
                label_text = None if labelled else str(label)
                # Markers keep short runs visible (one epoch is a single point); train's are
                # hollow so a lone train point differs from a lone val point.
                marker = ("o" if len(values) == 1 else ".") if len(values) <= 20 else None
                ax.plot(
                    _epochs(columns, len(values)),
                    values,
                    style,
                    color=colour,
                    label=label_text,
                    marker=marker,
                    markerfacecolor="none" if style == "--" else colour,
                )
                labelled = plotted = True
    if not plotted:
        raise ValueError(f"no run has '{metric}' or 'val_{metric}' in its history")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", ls="--"), Line2D([], [], color="black", ls="-")]
    labels += ["train", "val"]
    fig.legend(handles, labels, title="run / split", fontsize="small", loc="outside right upper")
    ax.set_title(f"{metric}: train (dashed) vs val (solid)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return fig


def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    positive_index: int = 1,
    mark: tuple[float, float, str] | None = None,
) -> Figure:
    """ROC curve(s): the positive class for K=2, one-vs-rest per class otherwise; AUC in legend.

    Each curve is scikit-learn's `RocCurveDisplay.from_predictions` drawn on a shared axis.
    `mark` = (FPR, TPR, label) marks an operating point, e.g. the run's own threshold.
    """
    y_true, probs = _as_arrays(y_true, probs)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    for c, name, colour in _curve_classes(probs, class_names, positive_index):
        positives = y_true == c
        if positives.all() or not positives.any():
            ax.plot([], [], color=colour, label=f"{name} (AUC undefined: one class)")
            continue
        skm.RocCurveDisplay.from_predictions(
            positives, probs[:, c], name=name, ax=ax, curve_kwargs={"color": colour, "lw": 1.8}
        )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance (AUC = 0.5)")
    if mark is not None:
        ax.plot([mark[0]], [mark[1]], "o", color="tab:red", ms=7, label=mark[2])
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    kind = f"positive class: {class_names[positive_index]}" if probs.shape[1] == 2 else "one-vs-rest"
    ax.set_title(f"ROC curve ({kind})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_precision_recall(
    y_true: Any, probs: Any, class_names: Sequence[str], positive_index: int = 1
) -> Figure:
    """Precision-recall curve(s) with average precision (AP) in the legend; prior line for K=2.

    Each curve is scikit-learn's `PrecisionRecallDisplay.from_predictions` on a shared axis.
    """
    y_true, probs = _as_arrays(y_true, probs)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    for c, name, colour in _curve_classes(probs, class_names, positive_index):
        positives = y_true == c
        if not positives.any():
            ax.plot([], [], color=colour, label=f"{name} (AP undefined: no positives)")
            continue
        skm.PrecisionRecallDisplay.from_predictions(
            positives, probs[:, c], name=name, ax=ax, curve_kwargs={"color": colour, "lw": 1.8}
        )
    if probs.shape[1] == 2:
        prior = float(np.mean(y_true == positive_index))
        ax.axhline(prior, color="grey", ls="--", lw=1, label=f"chance (prior = {prior:.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    kind = f"positive class: {class_names[positive_index]}" if probs.shape[1] == 2 else "one-vs-rest"
    ax.set_title(f"Precision-recall curve ({kind})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def plot_confusion_matrix(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> Figure:
    """Two panels from scikit-learn's `ConfusionMatrixDisplay`: counts, and row-normalised
    (each true class's share, so recall sits on the diagonal)."""
    k = len(class_names)
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    side = max(4.2, 0.55 * k + 2.0)
    fig = Figure(figsize=(2 * side + 1.0, side), layout="constrained")
    axes = fig.subplots(1, 2)
    names = [str(n) for n in class_names]
    rotate = k * max(len(n) for n in names) > 30  # tick labels would collide
    fontsize = 10 if k <= 6 else 8 if k <= 12 else 6
    for ax, normalize, fmt, title in (
        (axes[0], None, "d", "Counts"),
        (axes[1], "true", ".2f", "Normalised by true class (recall on diagonal)"),
    ):
        skm.ConfusionMatrixDisplay.from_predictions(
            y_true,
            y_pred,
            labels=list(range(k)),
            display_labels=names,
            normalize=normalize,
            values_format=fmt,
            cmap="Blues",
            ax=ax,
            xticks_rotation=45 if rotate else "horizontal",
            text_kw={"fontsize": fontsize},
        )
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
    fig.suptitle(f"Confusion matrix (n = {len(y_true)})")
    return fig


def plot_reliability_diagram(y_true: Any, probs: Any, n_bins: int = 15) -> Figure:
    """Top-label reliability diagram (accuracy vs confidence per bin) over a confidence histogram."""
    table = reliability_table(y_true, probs, n_bins)
    ece = expected_calibration_error(y_true, probs, n_bins)
    fig = Figure(figsize=(5.6, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = table["upper"] - table["lower"]
    filled = table["count"] > 0
    top.bar(
        table["lower"][filled],
        table["accuracy"][filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        alpha=0.8,
        label="accuracy",
    )
    centres = (table["lower"] + width / 2)[filled]
    top.vlines(
        centres,
        table["accuracy"][filled],
        table["confidence"][filled],
        color="tab:red",
        lw=2.0,
        label="gap to mean confidence",
    )
    top.scatter(
        centres,
        table["confidence"][filled],
        marker="_",
        s=150,
        color="tab:red",
        linewidths=2.5,
        zorder=3,
        label="mean confidence",
    )
    top.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(table["lower"], table["count"], width=width, align="edge", color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("samples")
    return fig


def plot_image_grid(
    images: Any, titles: Sequence[str] | None = None, ncols: int = 3, suptitle: str | None = None
) -> Figure:
    """Grid of images (N, H, W, C) as float in [0, 1] or uint8; C=1 (or no C) is shown in grey."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must have shape (N, H, W, C) with C in 1, 3, 4; got {images.shape}")
    n = len(images)
    if n == 0:
        raise ValueError("plot_image_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height, width = images.shape[1:3]
    cell = 2.6
    fig = Figure(figsize=(cell * ncols, cell * nrows * height / width + 0.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        image = _displayable(images[i])
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# ---------------------------------------------------------------------------------------------


def _close(fig: Figure) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")  # only figures made via pyplot are registered
    if pyplot is not None:
        pyplot.close(fig)


def _history_columns(history: Any) -> dict[str, list]:
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas DataFrame
        return {str(c): list(history[c]) for c in history.columns}
    if hasattr(history, "history") and isinstance(history.history, dict):  # keras History
        history = history.history
    if isinstance(history, Mapping):
        return {str(k): list(v) for k, v in history.items()}
    raise TypeError(f"history must be a DataFrame or a dict of lists, got {type(history).__name__}")


def _epochs(columns: Mapping[str, list], n: int) -> np.ndarray:
    if "epoch" in columns and len(columns["epoch"]) == n:
        return np.asarray(columns["epoch"], dtype=int) + 1
    return np.arange(1, n + 1)


def _colours(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _curve_classes(probs: np.ndarray, class_names: Sequence[str], positive_index: int) -> list:
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names but probs has {probs.shape[1]} columns")
    if probs.shape[1] == 2:
        return [(positive_index, str(class_names[positive_index]), "tab:blue")]
    return [
        (c, str(n), col)
        for c, (n, col) in enumerate(zip(class_names, _colours(len(class_names)), strict=True))
    ]


def _as_arrays(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must have shape (N, K) matching {len(y_true)} labels, got {probs.shape}")
    return y_true, probs


def _displayable(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:  # e.g. 0..255 floats or model-scaled pixels: stretch to [0, 1]
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image
