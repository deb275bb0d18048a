"""Final metrics and figures of a trained run: what `tfpipeline train` writes at the end.

Predictions are made once per split with the best checkpoint; the run's decision rule
(:class:`~tfpipeline.decision.DecisionRule`) is resolved on the validation predictions and then
applied unchanged to the test split, so test numbers stay honest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfpipeline.decision import DecisionRule
from tfpipeline.evaluation.breakdown import fake_breakdown
from tfpipeline.evaluation.metrics import classification_metrics
from tfpipeline.evaluation.plots import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_precision_recall,
    plot_roc,
    save_figure,
)


@dataclass(frozen=True)
class SplitPredictions:
    """Class indices and class probabilities (N, K, columns in class-name order)."""

    y_true: np.ndarray
    probs: np.ndarray


def class_probabilities(raw: np.ndarray, num_classes: int, positive_index: int | None) -> np.ndarray:
    """Model output -> (N, K) probabilities in class-name order.

    A binary model has one sigmoid unit that scores the *positive* class (whatever its index);
    a multi-class model's softmax is already in class order.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if num_classes != 2:
        return raw
    positive = raw.reshape(-1)
    probs = np.empty((len(positive), 2))
    probs[:, positive_index] = positive
    probs[:, 1 - positive_index] = 1.0 - positive
    return probs


def predict_split(model, dataset, labels: np.ndarray, num_classes: int, positive_index: int | None):
    """Run `model` over an ordered (unshuffled) dataset of one split."""
    raw = model.predict(dataset, verbose=0)
    return SplitPredictions(np.asarray(labels), class_probabilities(raw, num_classes, positive_index))


def resolve_rule(policy: str, info, val: SplitPredictions) -> DecisionRule:
    """The run's decision rule with its threshold resolved on the validation predictions."""
    rule = DecisionRule.for_classes(policy, info.class_names, info.positive_class)
    return rule.resolve(train_prior=info.train_prior, val_true=val.y_true, val_scores=val.probs)


def prediction_table(
    pred: SplitPredictions, class_names: Sequence[str], rule: DecisionRule, paths: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per image: its file (when read from files), true and predicted class, class probabilities.

    This is what `predictions_<split>.csv` holds, so error analysis, pooled cross-validation
    scores and re-thresholding need no second pass over the data.
    """
    table = pd.DataFrame({"path": list(paths)} if paths is not None else {}, index=range(len(pred.y_true)))
    table["label"] = [class_names[i] for i in pred.y_true]
    table["predicted"] = [class_names[i] for i in rule.predict(pred.probs)]
    for index, name in enumerate(class_names):
        table[f"p_{name}"] = pred.probs[:, index]
    return table


def write_run_report(
    run,
    history: pd.DataFrame,
    predictions: dict[str, SplitPredictions],
    info,
    policy: str,
    planned_epochs: int | None = None,
    *,
    paths: Mapping[str, Sequence[str]] | None = None,
    fake_class: str | None = None,
) -> dict:
    """Write metrics.json, `predictions_<split>.csv` and the standard PNGs into the run folder.

    Args:
        run: the RunFolder.
        history: per-epoch history (history.csv).
        predictions: split name -> SplitPredictions (must include `val`).
        info: the run's DataInfo (class names, positive class, train prior).
        policy: the threshold policy from the run's config.
        planned_epochs: the configured epochs, so the curves mark an early stop.
        paths: split name -> its files in prediction order, for splits read from files; with
            `fake_class`, a split whose fakes are named like CIPLAB's also gets its per-difficulty
            and per-region detection (`breakdown`, as `tfpipeline evaluate` reports it).
        fake_class: the name of the fake class.

    Returns:
        metrics.json's content.
    """
    class_names = list(info.class_names)
    rule = resolve_rule(policy, info, predictions["val"])
    metrics: dict[str, Any] = {"threshold": rule.to_json()}
    run.plots_dir.mkdir(exist_ok=True)
    save_figure(
        plot_learning_curves(history, planned_epochs=planned_epochs), run.plots_dir / "learning_curves.png"
    )
    for split, pred in predictions.items():
        metrics[split] = classification_metrics(pred.y_true, pred.probs, class_names, rule=rule)
        prediction_table(pred, class_names, rule, (paths or {}).get(split)).to_csv(
            run.path / f"predictions_{split}.csv", index=False
        )
        if fake_class and paths and split in paths:
            breakdown = fake_breakdown(paths[split], pred.y_true, pred.probs, rule, class_names, fake_class)
            if breakdown:
                metrics[split]["breakdown"] = breakdown
        save_figure(
            plot_confusion_matrix(pred.y_true, rule.predict(pred.probs), class_names),
            run.plots_dir / f"confusion_{split}.png",
        )
        save_figure(
            plot_roc(pred.y_true, pred.probs, class_names, rule.metric_index),
            run.plots_dir / f"roc_{split}.png",
        )
        save_figure(
            plot_precision_recall(pred.y_true, pred.probs, class_names, rule.metric_index),
            run.plots_dir / f"pr_{split}.png",
        )
    monitor = "val_auc" if "val_auc" in history else "val_accuracy"
    if monitor in history and len(history):
        metrics["best_epoch"] = int(history[monitor].idxmax()) + 1
        metrics["monitor"] = monitor
    run.write_json("metrics.json", metrics)
    return metrics
