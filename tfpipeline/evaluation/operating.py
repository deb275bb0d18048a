"""Operating points of a binary detector: what each decision threshold would give.

A detector's natural setting is a recall target ("flag at least 95 % of fakes"), not 0.5. For
recall targets 0.90, 0.95 and 0.99 this lists the highest threshold reaching each (the
`--threshold recall:R` rule), with the recall, false-positive rate and precision it gives on
the evaluated split, and the same for the run's own threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfpipeline.decision import DecisionRule, recall_threshold

RECALL_TARGETS = (0.90, 0.95, 0.99)


def operating_points(y_true: np.ndarray, probs: np.ndarray, rule: DecisionRule) -> list[dict[str, Any]]:
    """Rows {name, threshold, recall, fpr, precision} for the run's rule and each recall target.

    Returns [] for multi-class rules or a split without both classes.
    """
    if not rule.binary:
        return []
    positives = np.asarray(y_true) == rule.positive_index
    if positives.all() or not positives.any():
        return []
    scores = np.asarray(probs)[:, rule.positive_index]
    rows = [_row("run's threshold", rule.value, positives, scores)]
    for target in RECALL_TARGETS:
        rows.append(
            _row(f"recall >= {target:.2f}", recall_threshold(positives, scores, target), positives, scores)
        )
    return rows


def _row(name: str, threshold: float, positives: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    flagged = scores >= threshold
    true_positive = int(np.sum(flagged & positives))
    return {
        "name": name,
        "threshold": float(threshold),
        "recall": true_positive / int(positives.sum()),
        "fpr": int(np.sum(flagged & ~positives)) / int((~positives).sum()),
        "precision": true_positive / int(flagged.sum()) if flagged.any() else None,
    }


def operating_table(rows: list[dict[str, Any]], positive_class: str) -> str:
    """A markdown table of :func:`operating_points` (empty string without rows)."""
    if not rows:
        return ""
    lines = [
        f"| operating point ('{positive_class}' positive) | threshold | recall | FPR | precision |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        precision = "–" if row["precision"] is None else f"{row['precision']:.3f}"
        numbers = f"{row['threshold']:.4f} | {row['recall']:.3f} | {row['fpr']:.3f} | {precision}"
        lines.append(f"| {row['name']} | {numbers} |")
    return "\n".join(lines) + "\n"
