"""Final metrics and figures of a trained run: what `tfpipeline train` writes at the end.

Predictions are made once per split with the best checkpoint; the binary decision threshold is
chosen by the run's policy (`0.5`/number, `prior`, `tuned` on validation) and then applied
unchanged to the test split, so test numbers stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfpipeline.evaluation.metrics import choose_threshold, classification_metrics, predict_labels
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


def decide_threshold(
    policy: str, train_prior: float | None, val: SplitPredictions, positive_index
) -> float | None:
    """The binary decision threshold for this run; None for multi-class tasks."""
    if positive_index is None:
        return None
    return choose_threshold(
        policy,
        train_prior=train_prior if train_prior is not None else 0.5,
        val_true=(val.y_true == positive_index).astype(int),
        val_scores=val.probs[:, positive_index],
        positive_index=1,
    )


def write_run_report(
    run, history: pd.DataFrame, predictions: dict[str, SplitPredictions], info, policy: str
) -> dict:
    """Write metrics.json and the standard PNGs into the run folder; return the metrics.

    Args:
        run: the RunFolder.
        history: per-epoch history (history.csv).
        predictions: split name -> SplitPredictions (must include `val`).
        info: the run's DataInfo (class names, positive class, train prior).
        policy: the threshold policy from the run's config.
    """
    class_names = list(info.class_names)
    positive_index = info.positive_index
    threshold = decide_threshold(policy, info.train_prior, predictions["val"], positive_index)
    metrics: dict[str, Any] = {
        "threshold": {"policy": policy, "value": threshold, "positive_class": info.positive_class},
    }
    run.plots_dir.mkdir(exist_ok=True)
    save_figure(plot_learning_curves(history), run.plots_dir / "learning_curves.png")
    for split, pred in predictions.items():
        kwargs = {"positive_index": positive_index if positive_index is not None else 1}
        if threshold is not None:
            kwargs["threshold"] = threshold
        metrics[split] = classification_metrics(pred.y_true, pred.probs, class_names, **kwargs)
        y_pred = predict_labels(pred.probs, **kwargs)
        save_figure(
            plot_confusion_matrix(pred.y_true, y_pred, class_names), run.plots_dir / f"confusion_{split}.png"
        )
        save_figure(
            plot_roc(pred.y_true, pred.probs, class_names, kwargs["positive_index"]),
            run.plots_dir / f"roc_{split}.png",
        )
        save_figure(
            plot_precision_recall(pred.y_true, pred.probs, class_names, kwargs["positive_index"]),
            run.plots_dir / f"pr_{split}.png",
        )
    monitor = "val_auc" if "val_auc" in history else "val_accuracy"
    if monitor in history and len(history):
        metrics["best_epoch"] = int(history[monitor].idxmax()) + 1
        metrics["monitor"] = monitor
    run.write_json("metrics.json", metrics)
    return metrics
