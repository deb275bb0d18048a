"""The decision rule: how class probabilities become one predicted class.

A multi-class model predicts the most probable class. A binary model has one score, the
probability of its *positive* class, and predicts positive when `score >= threshold`. Where
that threshold comes from is the run's `--threshold` policy:

- a number in (0, 1), e.g. `0.5` (the default): that number;
- `prior`: the positive class's share of the training set (the assessment's choice);
- `tuned`: the threshold with the best validation F1 of the positive class;
- `accuracy`: the threshold with the best validation accuracy (F1 favours recall: when the
  positives are a minority of every image's evidence, e.g. region crops' mean score, the best-F1
  threshold flags most images and accuracy suffers);
- `recall:R`: the highest threshold whose validation recall of the positive class is at
  least R (a detector that must catch a share R of positives, e.g. fakes);
- `fpr:F`: the lowest threshold whose validation false-positive rate is at most F.

The data-dependent policies are resolved once, on validation predictions, after training; the
resolved value is then applied unchanged to test data, by `predict` and inside exported models.
:class:`DecisionRule` is the one object every stage uses for this (training's per-epoch
metrics, metrics.json, evaluate, predict, export), so the same input gets the same class
everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tfpipeline.errors import UserError

DATA_POLICIES = ("prior", "tuned", "accuracy")
TARGET_POLICIES = ("recall", "fpr")
DEFAULT_POLICY = "0.5"


def check_policy(policy: str) -> str:
    """Validate a `--threshold` value and return it; UserError saying what is allowed otherwise."""
    policy = str(policy).strip()
    if policy in DATA_POLICIES:
        return policy
    kind, sep, number = policy.partition(":")
    if sep and kind in TARGET_POLICIES:
        value = _number(number)
        if not 0.0 < value < 1.0:
            raise UserError(f"--threshold {kind}:R needs R in (0, 1), e.g. {kind}:0.95; got '{policy}'")
        return policy
    if not 0.0 < _number(policy) < 1.0:
        raise UserError(
            "--threshold must be a number in (0, 1), prior, tuned, accuracy, recall:R or fpr:F "
            f"(R, F in (0, 1)); got '{policy}'"
        )
    return policy


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return -1.0


@dataclass(frozen=True)
class DecisionRule:
    """How one run turns probabilities into classes.

    Attributes:
        policy: the `--threshold` policy (see the module docstring).
        value: the threshold on the positive-class probability; None for multi-class models
            and for a data-dependent policy not resolved yet.
        positive_class: name of the class a binary model's sigmoid scores; None for K > 2.
        positive_index: its index in the class order; None for K > 2.
    """

    policy: str = DEFAULT_POLICY
    value: float | None = None
    positive_class: str | None = None
    positive_index: int | None = None

    def __post_init__(self) -> None:
        check_policy(self.policy)
        if self.value is None and self.binary and _is_number(self.policy):
            object.__setattr__(self, "value", float(self.policy))

    # -- construction
    @classmethod
    def for_classes(
        cls, policy: str, class_names: Sequence[str], positive_class: str | None = None
    ) -> DecisionRule:
        """The rule for a model over `class_names` (binary: positive class default the second)."""
        if len(class_names) != 2:
            return cls(policy=policy)
        positive = positive_class if positive_class is not None else class_names[1]
        return cls(policy=policy, positive_class=positive, positive_index=list(class_names).index(positive))

    @classmethod
    def from_json(cls, values: dict[str, Any] | None, class_names: Sequence[str]) -> DecisionRule:
        """The rule stored as `{"policy", "value", "positive_class"}` (metrics.json, metadata.json)."""
        values = values or {}
        rule = cls.for_classes(
            values.get("policy", DEFAULT_POLICY), class_names, values.get("positive_class")
        )
        value = values.get("value")
        return replace(rule, value=float(value)) if value is not None and rule.binary else rule

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "value": self.value, "positive_class": self.positive_class}

    # -- facts
    @property
    def binary(self) -> bool:
        return self.positive_index is not None

    @property
    def resolved(self) -> bool:
        return not self.binary or self.value is not None

    @property
    def fitted_on_validation(self) -> bool:
        """True for binary policies whose threshold is chosen on validation labels and scores."""
        return self.binary and not _is_number(self.policy) and self.policy != "prior"

    @property
    def metric_index(self) -> int:
        """`positive_index` for metric functions that want an int even for multi-class data."""
        return self.positive_index if self.positive_index is not None else 1

    def epoch_threshold(self, train_prior: float | None) -> float:
        """The threshold per-epoch Keras metrics use while training.

        `prior` is known before training; `tuned`, `accuracy`, `recall:` and `fpr:` are only known after it,
        so epochs are logged at 0.5 and the final metrics use the resolved value.
        """
        if self.policy == "prior":
            return float(train_prior) if train_prior is not None else 0.5
        return float(self.value) if self.value is not None else 0.5

    # -- resolution and use
    def resolve(
        self, *, train_prior: float | None, val_true: Any = None, val_scores: Any = None
    ) -> DecisionRule:
        """This rule with its threshold value computed (a no-op for multi-class rules).

        Args:
            train_prior: positive-class share of the training set (`prior`).
            val_true: validation class indices (`tuned`, `accuracy`, `recall:`, `fpr:`).
            val_scores: validation positive-class probabilities, (N,) or (N, 2) class probabilities.

        Raises:
            UserError: the policy cannot be met on this data (one class only in validation).
        """
        if not self.binary:
            return self
        if self.policy == "prior":
            if train_prior is None or not 0.0 < train_prior < 1.0:
                raise UserError(
                    f"--threshold prior needs both classes in the training set (positive share {train_prior})"
                )
            return replace(self, value=float(train_prior))
        if _is_number(self.policy):
            return replace(self, value=float(self.policy))
        if val_true is None or val_scores is None:
            raise ValueError(f"the '{self.policy}' threshold needs validation labels and scores")
        positives, scores = self._positives_and_scores(val_true, val_scores)
        if self.policy == "tuned":
            return replace(self, value=best_f1_threshold(positives, scores))
        if self.policy == "accuracy":
            return replace(self, value=best_accuracy_threshold(positives, scores))
        kind, _, target = self.policy.partition(":")
        if kind == "recall":
            return replace(self, value=recall_threshold(positives, scores, float(target)))
        return replace(self, value=fpr_threshold(positives, scores, float(target)))

    def _positives_and_scores(self, val_true: Any, val_scores: Any) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(val_scores, dtype=np.float64)
        if scores.ndim == 2:
            scores = scores[:, self.positive_index]
        positives = np.asarray(val_true) == self.positive_index
        if positives.all() or not positives.any():
            raise UserError(f"--threshold {self.policy} needs both classes in the validation set")
        return positives, scores

    def predict(self, probs: Any) -> np.ndarray:
        """Class indices for (N, K) probabilities: thresholded positive score, or argmax."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise ValueError(f"probs must have shape (N, K) with K >= 2, got {probs.shape}")
        if not self.binary or probs.shape[1] != 2:
            return np.argmax(probs, axis=1).astype(np.int64)
        if self.value is None:
            raise ValueError(f"the '{self.policy}' decision rule has not been resolved on validation data")
        positive = probs[:, self.positive_index] >= self.value
        return np.where(positive, self.positive_index, 1 - self.positive_index).astype(np.int64)

    def describe(self) -> str:
        """One line for logs, e.g. `threshold 0.4310 (recall:0.95) for 'fake'`."""
        if not self.binary:
            return "most probable class"
        value = f"{self.value:.4f}" if self.value is not None else "unresolved"
        return f"threshold {value} ({self.policy}) for '{self.positive_class}'"


def _is_number(policy: str) -> bool:
    return policy not in DATA_POLICIES and ":" not in policy


def best_f1_threshold(positives: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising the positive class's F1; ties go to the smallest (highest recall).

    Candidates are `sklearn.metrics.precision_recall_curve`'s thresholds (the distinct scores),
    so predicting positive when `score >= threshold` reproduces the best F1 exactly.
    """
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(positives, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[f1 == f1.max()].min())


def best_accuracy_threshold(positives: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising accuracy; ties go to the smallest, as for F1.

    Candidates are the distinct scores (`sklearn.metrics.roc_curve` without dropping points): at
    each, accuracy = (recall x positives + (1 - false-positive rate) x negatives) / all. Calling
    every image negative is not a candidate: a threshold must flag something.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the first point flags nothing
    # Counts of correct images, rounded back to integers so that equal counts tie exactly.
    correct = np.rint(tpr * positives.sum() + (1.0 - fpr) * (~positives).sum())
    return float(thresholds[correct == correct.max()].min())


def recall_threshold(positives: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose recall (`score >= t` among positives) is at least `target`."""
    ranked = np.sort(scores[positives])[::-1]
    needed = int(np.ceil(target * len(ranked) - 1e-9))  # positives that must score >= t
    return float(ranked[max(needed, 1) - 1])


def fpr_threshold(positives: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest threshold whose false-positive rate (`score >= t` among negatives) is <= `target`.

    Every negative scoring at or above the threshold is a false positive, so the threshold sits
    just above the negative score that would push the rate over `target`.
    """
    negatives = np.sort(scores[~positives])[::-1]
    allowed = int(np.floor(target * len(negatives) + 1e-9))  # negatives that may score >= t
    if allowed >= len(negatives):
        return float(negatives[-1])
    # Above the (allowed+1)-th highest negative score; but keep ties with it excluded.
    return float(np.nextafter(negatives[allowed], np.inf))
