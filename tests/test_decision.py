"""The decision rule: policy parsing, resolution on validation scores, and its use everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from tfpipeline.config import TrainConfig
from tfpipeline.decision import DecisionRule, check_policy
from tfpipeline.errors import UserError

NAMES = ("cat", "dog")


def _scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    scores = np.clip(0.3 * y + rng.normal(0.4, 0.2, n), 0, 1)
    return y, scores


@pytest.mark.parametrize("policy", ["0.5", "0.25", "prior", "tuned", "accuracy", "recall:0.95", "fpr:0.01"])
def test_valid_policies_are_accepted(policy):
    assert check_policy(policy) == policy
    assert TrainConfig(threshold=policy).threshold == policy


@pytest.mark.parametrize("policy", ["1.5", "0", "best", "recall:1.2", "recall:0", "fpr:x", "precision:0.9"])
def test_bad_policies_name_the_option(policy):
    with pytest.raises(UserError, match="--threshold"):
        check_policy(policy)


def test_numbers_and_prior():
    assert DecisionRule.for_classes("0.25", NAMES).value == 0.25
    rule = DecisionRule.for_classes("prior", NAMES)
    assert rule.value is None and not rule.resolved
    assert rule.epoch_threshold(0.375) == 0.375
    assert rule.resolve(train_prior=0.375).value == pytest.approx(0.375)
    with pytest.raises(UserError, match="both classes"):
        rule.resolve(train_prior=0.0)


def test_positive_class_defaults_to_the_second_and_can_be_the_first():
    assert DecisionRule.for_classes("0.5", NAMES).positive_index == 1
    rule = DecisionRule.for_classes("0.5", NAMES, "cat")
    assert rule.positive_index == 0 and rule.positive_class == "cat"
    probs = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert rule.predict(probs).tolist() == [0, 1]
    multi = DecisionRule.for_classes("0.5", ("a", "b", "c"))
    assert not multi.binary and multi.resolved
    assert multi.predict(np.array([[0.1, 0.2, 0.7]])).tolist() == [2]


def test_tuned_threshold_maximises_f1_by_brute_force():
    y, scores = _scores(200, seed=3)
    rule = DecisionRule.for_classes("tuned", NAMES).resolve(train_prior=0.3, val_true=y, val_scores=scores)
    t = rule.value
    assert t in set(scores)  # achievable: one of the validation scores
    best_f1 = max(skm.f1_score(y, scores >= c) for c in np.unique(scores))
    assert skm.f1_score(y, scores >= t) == pytest.approx(best_f1)
    # ties go to the smallest threshold with the best F1
    assert t == min(c for c in np.unique(scores) if skm.f1_score(y, scores >= c) == pytest.approx(best_f1))
    assert rule.epoch_threshold(0.3) == t  # once resolved, epochs would log at it too


def test_accuracy_threshold_maximises_accuracy_by_brute_force():
    y, scores = _scores(300, seed=5)
    rule = DecisionRule.for_classes("accuracy", NAMES).resolve(train_prior=0.4, val_true=y, val_scores=scores)
    t = rule.value
    assert t in set(scores)
    accuracies = {c: skm.accuracy_score(y, scores >= c) for c in np.unique(scores)}
    best = max(accuracies.values())
    assert skm.accuracy_score(y, scores >= t) == pytest.approx(best)
    assert t == min(c for c, a in accuracies.items() if a == pytest.approx(best))  # ties: the smallest
    # A minority of positives: best accuracy sits above the best-F1 threshold, which favours recall.
    f1_value = (
        DecisionRule.for_classes("tuned", NAMES).resolve(train_prior=0.4, val_true=y, val_scores=scores).value
    )
    assert t >= f1_value


def test_accuracy_threshold_follows_the_positive_class_and_needs_both_classes():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])  # dog scores
    dog = DecisionRule.for_classes("accuracy", NAMES).resolve(train_prior=None, val_true=y, val_scores=probs)
    assert dog.value == pytest.approx(0.8) and dog.predict(probs).tolist() == y.tolist()
    cat = DecisionRule.for_classes("accuracy", NAMES, "cat").resolve(
        train_prior=None, val_true=y, val_scores=probs
    )
    assert cat.value == pytest.approx(0.3) and cat.predict(probs).tolist() == y.tolist()
    with pytest.raises(UserError, match="accuracy needs both classes"):
        dog.resolve(train_prior=None, val_true=np.zeros(5, int), val_scores=probs)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.99])
def test_recall_policy_is_the_highest_threshold_meeting_the_target(target):
    y, scores = _scores()
    rule = DecisionRule.for_classes(f"recall:{target}", NAMES)
    t = rule.resolve(train_prior=0.4, val_true=y, val_scores=scores).value
    recall = np.mean(scores[y == 1] >= t)
    assert recall >= target
    higher = scores[scores > t]
    if len(higher):  # any higher candidate threshold misses the target
        assert np.mean(scores[y == 1] >= higher.min()) < target


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_fpr_policy_is_the_lowest_threshold_within_the_target(target):
    y, scores = _scores()
    t = (
        DecisionRule.for_classes(f"fpr:{target}", NAMES)
        .resolve(train_prior=0.4, val_true=y, val_scores=scores)
        .value
    )
    negatives = scores[y == 0]
    assert np.mean(negatives >= t) <= target
    lower = negatives[negatives < t]
    if len(lower):  # lowering the threshold to the next negative score breaks the target
        assert np.mean(negatives >= lower.max()) > target


def test_data_policies_need_both_classes_in_validation():
    rule = DecisionRule.for_classes("recall:0.9", NAMES)
    with pytest.raises(UserError, match="both classes"):
        rule.resolve(train_prior=0.5, val_true=np.ones(5, int), val_scores=np.linspace(0, 1, 5))


def test_unresolved_rule_refuses_to_predict_and_round_trips_json():
    rule = DecisionRule.for_classes("tuned", NAMES, "cat")
    with pytest.raises(ValueError, match="not been resolved"):
        rule.predict(np.array([[0.5, 0.5]]))
    resolved = rule.resolve(
        train_prior=0.5, val_true=np.array([0, 1, 0, 1]), val_scores=np.array([0.9, 0.2, 0.6, 0.4])
    )
    again = DecisionRule.from_json(resolved.to_json(), NAMES)
    assert again == resolved
    assert "cat" in resolved.describe() and "tuned" in resolved.describe()
