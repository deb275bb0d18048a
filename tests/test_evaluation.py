"""Evaluation metrics: `classification_metrics` agrees with scikit-learn (binary at a custom
threshold, positive class 0, multiclass macro and top-k), undefined AUCs are None, the text
report, expected calibration error and the reliability table, and top losses.

Plots, Grad-CAM and the run summary are in test_evaluation_plots.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from evaluation_scores import BINARY_NAMES, MULTI_NAMES, binary_scores, multiclass_scores
from sklearn import metrics as skm

from tfpipeline.decision import DecisionRule
from tfpipeline.evaluation import (
    as_class_probs,
    classification_metrics,
    classification_report_text,
    expected_calibration_error,
    reliability_table,
    top_loss_titles,
    top_losses,
)

# ----------------------------------------------------------------------------- metrics


def test_as_class_probs_sigmoid_and_softmax():
    sig = np.array([[0.2], [0.9]])
    np.testing.assert_allclose(as_class_probs(sig, 2), [[0.8, 0.2], [0.1, 0.9]])
    soft = np.array([[0.1, 0.7, 0.2]])
    np.testing.assert_array_equal(as_class_probs(soft, 3), soft)
    with pytest.raises(ValueError):
        as_class_probs(sig, 3)


def test_binary_metrics_match_sklearn():
    y, probs = binary_scores()
    threshold = 0.4
    m = classification_metrics(
        y, probs, BINARY_NAMES, rule=replace(DecisionRule.for_classes("0.5", BINARY_NAMES), value=threshold)
    )
    pred = (probs[:, 1] >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, probs[:, 1]))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["support"] == {"cat": int((y == 0).sum()), "dog": int((y == 1).sum())}
    assert m["threshold"] == threshold and m["positive_class"] == "dog"


def test_binary_metrics_with_positive_class_zero():
    y, probs = binary_scores()
    m = classification_metrics(
        y, probs, BINARY_NAMES, rule=DecisionRule.for_classes("0.5", BINARY_NAMES, "cat")
    )
    pred = np.where(probs[:, 0] >= 0.5, 0, 1)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]))
    assert m["positive_class"] == "cat"


def test_multiclass_metrics_match_sklearn():
    y, probs = multiclass_scores()
    m = classification_metrics(y, probs, MULTI_NAMES)
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for name in ("precision", "recall", "f1"):
        fn = getattr(skm, f"{name}_score" if name != "f1" else "f1_score")
        assert m[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0))
    assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3))
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    per_class_f1 = skm.f1_score(y, pred, average=None)
    assert [m["per_class"][n]["f1"] for n in MULTI_NAMES] == pytest.approx(per_class_f1)
    assert m["per_class"]["bird"]["support"] == int((y == 2).sum())
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_top_k_only_when_more_classes_than_k():
    y, probs = multiclass_scores(k=4)
    m = classification_metrics(y, probs, MULTI_NAMES[:4])
    assert "top3_accuracy" in m and "top5_accuracy" not in m


def test_single_class_auc_is_none_not_error():
    y, probs = binary_scores()
    ones = np.ones_like(y)
    m = classification_metrics(ones, probs, BINARY_NAMES)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert m["accuracy"] == pytest.approx(np.mean(probs[:, 1] >= 0.5))
    ym, pm = multiclass_scores()
    mm = classification_metrics(np.zeros_like(ym), pm, MULTI_NAMES)
    assert mm["roc_auc"] is None
    assert mm["precision"] >= 0  # zero_division=0: no warning-turned-crash, no NaN


def test_report_text_names_classes():
    y, probs = multiclass_scores()
    text = classification_report_text(y, probs, MULTI_NAMES)
    assert all(name in text for name in MULTI_NAMES)


def test_ece_small_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(0)
    n = 20000
    p = rng.uniform(0.5, 1.0, n)  # top-label confidence
    correct = rng.random(n) < p  # calibrated: correct with probability p
    y = np.where(correct, 1, 0)
    probs = np.stack([1 - p, p], axis=1)
    assert expected_calibration_error(y, probs) < 0.02
    y_over = np.where(rng.random(n) < 0.6, 1, 0)  # 60% accurate at ~0.99 confidence
    probs_over = np.tile([0.01, 0.99], (n, 1))
    assert expected_calibration_error(y_over, probs_over) == pytest.approx(0.39, abs=0.02)
    table = reliability_table(y, probs, n_bins=10)
    assert table["count"].sum() == n and len(table["accuracy"]) == 10
    assert np.isnan(table["accuracy"][0])  # no top-label confidence below 0.5


def test_top_losses_are_highest_cross_entropy():
    y, probs = multiclass_scores()
    idx = top_losses(y, probs, 5)
    ce = -np.log(probs[np.arange(len(y)), y])
    np.testing.assert_array_equal(idx, np.argsort(-ce)[:5])
    assert all(probs[i].argmax() != y[i] for i in idx)
    title = top_loss_titles(y, probs, MULTI_NAMES, idx[:1])[0]
    assert title.startswith(f"true: {MULTI_NAMES[y[idx[0]]]} / pred: ") and "(p=0." in title
