"""`tfpipeline evaluate`: re-evaluate a finished run's best checkpoint on one split.

The run folder supplies everything: the checkpoint, the config (so the data is rebuilt exactly
as training built it), the pixel scaling from run.json and the decision rule from
metrics.json (so the numbers agree with what training reported). Output goes to
`RUN/evaluation/<split>/`: classification_report.txt, metrics.json, confusion_matrix.png,
roc.png, precision_recall.png, reliability.png, top_losses.png, gradcam.png and summary.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.data.decode import unscale_pixels
from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import RunContext, load_run_model, open_run

log = logging.getLogger(__name__)

GRADCAM_CHUNK = 8  # images per Grad-CAM forward/backward pass (bounds memory for ResNet50)
ECE_BINS = 15


# ---------------------------------------------------------------------------------------------
# evaluate


@dataclass
class EvaluationResult:
    """What `evaluate_run` produced: where, on which split, the metrics and the files."""

    split: str
    out_dir: Path
    metrics: dict[str, Any]
    report: str
    files: dict[str, Path] = field(default_factory=dict)


def evaluate_run(
    run_path: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    gradcam: int = 8,
    top_losses: int = 9,
) -> EvaluationResult:
    """Evaluate a run's checkpoint on `split` and write every artefact.

    Args:
        run_path: the run folder.
        data: evaluate on this `--data` instead of the run's (same classes required).
        split: `test` or `val`; default test when the data has one, else val.
        out: output folder; default `RUN/evaluation/<split>`.
        gradcam: number of images in the Grad-CAM grid (0: none).
        top_losses: number of images in the top-losses grid (0: none).

    Raises:
        UserError: not a run folder, the split does not exist, the data's classes differ.
    """
    from tfpipeline.data import load_data
    from tfpipeline.evaluation.metrics import (
        classification_metrics,
        classification_report_text,
    )
    from tfpipeline.evaluation.plots import (
        plot_confusion_matrix,
        plot_precision_recall,
        plot_reliability_diagram,
        plot_roc,
        save_figure,
    )
    from tfpipeline.evaluation.run_report import class_probabilities
    from tfpipeline.evaluation.summary import write_summary

    context = open_run(run_path)
    # No cache: an on-disk cache prefix from training would serve stale pixels for other --data.
    data_config = replace(context.config.data, cache="none", **({"data": data} if data else {}))
    bundle = load_data(data_config, scaling=context.scaling)
    if tuple(bundle.info.class_names) != context.class_names:
        raise UserError(
            f"{bundle.info.location}: classes {', '.join(bundle.info.class_names)} differ from the run's "
            f"({', '.join(context.class_names)})"
        )
    split = split or ("test" if bundle.test is not None else "val")
    dataset = {"val": bundle.val, "test": bundle.test}.get(split)
    if dataset is None:
        raise UserError(f"{bundle.info.location}: has no {split} split (it has {', '.join(bundle.splits)})")
    out_dir = Path(out) if out else context.run.path / "evaluation" / split
    out_dir.mkdir(parents=True, exist_ok=True)

    model = load_run_model(context)
    y_true = np.asarray(bundle.splits[split].labels)
    probs = class_probabilities(
        model.predict(dataset, verbose=0), context.num_classes, context.positive_index
    )
    rule = context.rule
    names = list(context.class_names)
    y_pred = rule.predict(probs)

    metrics = {
        "run": str(context.run.path),
        "split": split,
        "data": bundle.info.location,
        "checkpoint": str(context.run.model_checkpoint().relative_to(context.run.path)),
        **classification_metrics(y_true, probs, names, rule=rule),
    }
    metrics["calibration"] = {"ece": metrics["ece"], "bins": ECE_BINS, "table": _calibration(y_true, probs)}
    report = classification_report_text(y_true, probs, names, rule=rule)

    files = {
        "classification_report": out_dir / "classification_report.txt",
        "metrics": out_dir / "metrics.json",
    }
    files["classification_report"].write_text(report)
    files["metrics"].write_text(json.dumps(metrics, indent=2))
    figures = {
        "confusion_matrix": lambda: plot_confusion_matrix(y_true, y_pred, names),
        "roc": lambda: plot_roc(y_true, probs, names, rule.metric_index),
        "precision_recall": lambda: plot_precision_recall(y_true, probs, names, rule.metric_index),
        "reliability": lambda: plot_reliability_diagram(y_true, probs, ECE_BINS),
    }
    for name, make in figures.items():
        files[name] = save_figure(make(), out_dir / f"{name}.png")

    selection = _Selection(bundle.splits[split], data_config, context, split)
    if top_losses > 0:
        files["top_losses"] = _top_losses_figure(selection, y_true, probs, y_pred, top_losses, out_dir)
    if gradcam > 0:
        files["gradcam"] = _gradcam_figure(selection, model, y_true, probs, y_pred, gradcam, out_dir)

    summary = write_summary(summary_facts(context, bundle.info, split, metrics))
    files["summary"] = out_dir / "summary.md"
    files["summary"].write_text(summary)
    return EvaluationResult(split=split, out_dir=out_dir, metrics=metrics, report=report, files=files)


def _calibration(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """The reliability diagram's bins as JSON rows (NaN -> None for empty bins)."""
    from tfpipeline.evaluation.metrics import reliability_table

    table = reliability_table(y_true, probs, ECE_BINS)
    keys = ("lower", "upper", "count", "accuracy", "confidence")
    return [
        {k: (None if np.isnan(table[k][i]) else float(table[k][i])) for k in keys}
        | {"count": int(table["count"][i])}
        for i in range(ECE_BINS)
    ]


class _Selection:
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


def _title(names, y_true, probs, y_pred, i: int) -> str:
    pred = int(y_pred[i])
    return f"true: {names[int(y_true[i])]}\npred: {names[pred]} (p={probs[i, pred]:.2f})"


def _top_losses_figure(selection: _Selection, y_true, probs, y_pred, count: int, out_dir: Path) -> Path:
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
    titles = [_title(names, y_true, probs, y_pred, i) for i in chosen]
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


def _gradcam_figure(selection: _Selection, model, y_true, probs, y_pred, count: int, out_dir: Path) -> Path:
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
    titles = [_title(context.class_names, y_true, probs, y_pred, int(i)) for i in chosen]
    figure = plot_gradcam_grid(
        unscale_pixels(inputs, context.scaling),
        heatmaps,
        titles,
        ncols=2,
        suptitle=f"Grad-CAM of the predicted class, {len(chosen)} {selection.name} images "
        f"(layer {'/'.join(path)})",
    )
    return save_figure(figure, out_dir / "gradcam.png")


# ---------------------------------------------------------------------------------------------
# summary facts


def summary_facts(context: RunContext, data_info, split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The facts `write_summary` needs, from run.json, the config, history.csv and the metrics."""
    import pandas as pd

    from tfpipeline.models import MODELS, get_spec

    config, info = context.config, context.info
    spec = get_spec(config.model.name)
    history = pd.read_csv(context.run.history_file) if context.run.history_file.is_file() else pd.DataFrame()
    train_metrics = {}
    if len(history):
        last = history.iloc[-1]
        skip = {"epoch", "epoch_seconds", "learning_rate"}
        train_metrics = {
            k: float(last[k]) for k in history.columns if not k.startswith("val_") and k not in skip
        }
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list, str))}
    val_metrics = scalars if split == "val" else (context.metrics.get("val") or {})
    facts: dict[str, Any] = {
        "run_name": f"{context.run.path.name} (evaluated on {split})",
        "data_source": data_info.location,
        "class_names": list(context.class_names),
        "split_counts": data_info.counts,
        "model_name": config.model.name,
        "model_params": int(info.get("total_params") or 0),
        "trainable_params": info.get("trainable_params"),
        "pretrained": spec.pretrained(config.model),
        "pretrained_models": [name for name, other in MODELS.items() if other.can_be_pretrained],
        "image_size": list(config.data.image_size),
        "epochs_run": int(info.get("epochs_run") or len(history)),
        "epochs_planned": config.train.epochs,
        "optimizer": config.train.optimizer,
        "lr": config.train.lr,
        "schedule": config.train.schedule,
        "early_stopping": config.train.early_stopping,
        "stopped_early": bool(info.get("stopped_early", False)),
        "best_epoch": context.metrics.get("best_epoch"),
        "train_seconds": info.get("train_seconds"),
        "class_weight": config.train.class_weight,
        "augmentation": config.data.augment.enabled,
        "train_metrics": train_metrics,
        "val_metrics": val_metrics,
        "test_metrics": scalars if split == "test" else None,
    }
    if context.rule.binary:
        facts["threshold_policy"] = context.rule.policy
        facts["threshold"] = context.rule.value
    return {k: v for k, v in facts.items() if v is not None}
