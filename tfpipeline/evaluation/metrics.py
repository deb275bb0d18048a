"""Classification metrics over numpy predictions, computed with scikit-learn.

Conventions shared by the whole evaluation package:

* `y_true` is an int array of class indices, shape (N,).
* `probs` is a float array of class probabilities, shape (N, K). Binary tasks use K=2 with
  column `positive_index` holding the positive class; :func:`as_class_probs` turns a sigmoid
  output (N, 1) into that form.
* Predicted classes come from a :class:`~tfpipeline.decision.DecisionRule` (binary: positive
  when `probs[:, positive_index] >= threshold`; multi-class: argmax). Without one, the default
  rule applies: threshold 0.5 on the second class.
* Undefined metrics (an AUC when y_true holds a single class) are `None`, never NaN or an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from tfpipeline.decision import DecisionRule

TOP_K = (3, 5)


def as_class_probs(raw_model_output: Any, num_classes: int) -> np.ndarray:
    """Model output -> (N, K) class probabilities.

    A single sigmoid column (N, 1) or (N,) with `num_classes == 2` becomes `[1 - p, p]`, so
    column 1 is the positive (second) class; a softmax output (N, K) passes through unchanged.
    """
    out = np.asarray(raw_model_output, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"expected model output of shape (N, 1) or (N, K), got {out.shape}")
    if out.shape[1] == 1:
        if num_classes != 2:
            raise ValueError(f"a single sigmoid output needs num_classes=2, got {num_classes}")
        return np.concatenate([1.0 - out, out], axis=1)
    if out.shape[1] != num_classes:
        raise ValueError(f"model output has {out.shape[1]} columns but there are {num_classes} classes")
    return out


def default_rule(class_names: Sequence[str], rule: DecisionRule | None) -> DecisionRule:
    """`rule`, or the default one (0.5 on the second class) for these classes."""
    if rule is not None:
        if rule.binary != (len(class_names) == 2):
            raise ValueError(
                f"a {'binary' if rule.binary else 'multi-class'} rule for {len(class_names)} classes"
            )
        return rule
    return DecisionRule.for_classes("0.5", class_names)


def classification_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    rule: DecisionRule | None = None,
) -> dict[str, Any]:
    """Headline metrics as plain Python values (JSON-ready), under `rule` (default: 0.5 on class 1).

    Binary (K=2): accuracy, precision, recall, f1 (positive class at the rule's threshold), roc_auc,
    pr_auc (average precision), threshold, positive_class, log_loss, ece, support,
    confusion_matrix. Multi-class: accuracy, macro precision/recall/f1, top3/top5_accuracy (when
    K > k), macro one-vs-rest roc_auc, log_loss, ece, per_class {name: precision, recall, f1,
    support, roc_auc}, support, confusion_matrix. The confusion matrix has true classes as rows.
    """
    y_true, probs = _check(y_true, probs, class_names)
    rule = default_rule(class_names, rule)
    k = probs.shape[1]
    labels = list(range(k))
    y_pred = rule.predict(probs)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    out: dict[str, Any] = {
        "num_samples": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
    }
    if k == 2:
        positive_index = rule.positive_index
        scores = probs[:, positive_index]
        positives = y_true == positive_index
        both = bool(positives.any() and not positives.all())
        prf = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=[positive_index], average=None, zero_division=0
        )
        out.update(
            precision=float(prf[0][0]),
            recall=float(prf[1][0]),
            f1=float(prf[2][0]),
            roc_auc=float(skm.roc_auc_score(positives, scores)) if both else None,
            pr_auc=float(skm.average_precision_score(positives, scores)) if both else None,
            threshold=float(rule.value),
            positive_class=str(class_names[positive_index]),
        )
    else:
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=0
        )
        aucs = [_binary_auc(y_true == c, probs[:, c]) for c in labels]
        defined = [a for a in aucs if a is not None]
        out.update(
            precision=float(np.mean(precision)),
            recall=float(np.mean(recall)),
            f1=float(np.mean(f1)),
            # Mean of the per-class one-vs-rest AUCs = sklearn's multi_class="ovr", average="macro"
            # when every class is present; classes absent from y_true are left out.
            roc_auc=float(np.mean(defined)) if defined else None,
        )
        for top in TOP_K:
            if k > top:
                out[f"top{top}_accuracy"] = float(
                    skm.top_k_accuracy_score(y_true, probs, k=top, labels=labels)
                )
        out["per_class"] = {
            str(name): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "roc_auc": aucs[c],
            }
            for c, name in enumerate(class_names)
        }
    out["log_loss"] = float(skm.log_loss(y_true, _renormalise(probs), labels=labels))
    out["ece"] = expected_calibration_error(y_true, probs)
    counts = np.bincount(y_true, minlength=k)
    out["support"] = {str(name): int(counts[c]) for c, name in enumerate(class_names)}
    out["confusion_matrix"] = cm.tolist()
    return out


def classification_report_text(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    rule: DecisionRule | None = None,
) -> str:
    """scikit-learn's text `classification_report`, with class names and the same decision rule."""
    y_true, probs = _check(y_true, probs, class_names)
    y_pred = default_rule(class_names, rule).predict(probs)
    return skm.classification_report(
        y_true,
        y_pred,
        labels=list(range(probs.shape[1])),
        target_names=[str(n) for n in class_names],
        digits=3,
        zero_division=0,
    )


def reliability_table(y_true: Any, probs: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence binned into `n_bins` equal-width bins over [0, 1].

    Returns arrays of length `n_bins`: `lower`, `upper` (bin edges; a bin holds confidences in
    (lower, upper], the first also holds 0), `count`, `accuracy` and `confidence` (mean top-label
    probability; both NaN for empty bins).
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = _check_probs(probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "accuracy": acc, "confidence": conf}


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (bin share) * |accuracy - mean confidence|."""
    table = reliability_table(y_true, probs, n_bins)
    total = table["count"].sum()
    if total == 0:
        return 0.0
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(table["count"][filled] / total * gaps))


def top_losses(y_true: Any, probs: Any, k: int) -> np.ndarray:
    """Indices of the `k` samples with the highest cross-entropy (most confidently wrong first)."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = _check_probs(probs)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    losses = -np.log(p_true)
    order = np.argsort(-losses, kind="stable")
    return order[: max(0, int(k))]


def top_loss_titles(y_true: Any, probs: Any, class_names: Sequence[str], indices: Sequence[int]) -> list[str]:
    """Titles "true: X / pred: Y (p=0.93)" for the given samples (p = predicted-class probability)."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = _check_probs(probs)
    titles = []
    for i in indices:
        pred = int(np.argmax(probs[i]))
        titles.append(f"true: {class_names[y_true[i]]} / pred: {class_names[pred]} (p={probs[i, pred]:.2f})")
    return titles


# ---------------------------------------------------------------------------------------------


def _binary_auc(positives: np.ndarray, scores: np.ndarray) -> float | None:
    if positives.all() or not positives.any():
        return None
    return float(skm.roc_auc_score(positives, scores))


def _renormalise(probs: np.ndarray) -> np.ndarray:
    sums = probs.sum(axis=1, keepdims=True)
    return probs / np.where(sums > 0, sums, 1.0)


def _check_probs(probs: Any) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2, got {probs.shape}")
    return probs


def _check(y_true: Any, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = _check_probs(probs)
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} predictions")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty set of predictions")
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names but probs has {probs.shape[1]} columns")
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{probs.shape[1] - 1}")
    return y_true, probs
