"""Results broken down by what the file names say: CIPLAB difficulty and edited regions.

For a real-vs-fake detector one overall accuracy hides where it fails. CIPLAB fakes are graded
easy / mid / hard and name the regions that were replaced (:mod:`tfpipeline.data.regions`), so:

- per difficulty: how many of that grade's fakes were caught (recall), and the AUC of those
  fakes against every real image of the split;
- per region: the detection rate of the fakes in which that region was edited.

Both need file names with the pattern; for other data they are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from tfpipeline.data.regions import DIFFICULTIES, REGIONS, parse_region_name
from tfpipeline.decision import DecisionRule


def fake_breakdown(
    paths: Sequence[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    rule: DecisionRule,
    class_names: Sequence[str],
    fake_class: str,
) -> dict[str, Any]:
    """Per-difficulty and per-region detection of the fakes named like CIPLAB's.

    Args:
        paths: the evaluated files, in the order of `y_true` / `probs`.
        y_true: class indices.
        probs: (N, 2) class probabilities.
        rule: the run's decision rule.
        class_names: the class order of `probs`.
        fake_class: the name of the fake class.

    Returns:
        `{"difficulty": {easy: {count, detected, recall, auc}, ...}, "region": {left_eye: {...}}}`,
        or {} when no file is named like a CIPLAB fake or the task has no such class.
    """
    names = list(class_names)
    if len(names) != 2 or fake_class not in names or not len(paths):
        return {}
    fake = names.index(fake_class)
    labels = [parse_region_name(p) for p in paths]
    if not any(label is not None for label in labels):
        return {}
    predicted_fake = rule.predict(probs) == fake
    fake_score = probs[:, fake]
    reals = np.asarray(y_true) != fake
    out: dict[str, Any] = {"difficulty": {}, "region": {}}
    for difficulty in DIFFICULTIES:
        chosen = np.array([lab is not None and lab.difficulty == difficulty for lab in labels]) & ~reals
        out["difficulty"][difficulty] = _detection(chosen, predicted_fake, fake_score, reals)
    for r, region in enumerate(REGIONS):
        chosen = np.array([lab is not None and lab.edited[r] for lab in labels]) & ~reals
        out["region"][region] = _detection(chosen, predicted_fake, fake_score, reals)
    return out


def _detection(chosen: np.ndarray, predicted_fake: np.ndarray, score: np.ndarray, reals: np.ndarray) -> dict:
    count = int(chosen.sum())
    if count == 0:
        return {"count": 0, "detected": 0, "recall": None, "auc": None}
    detected = int(predicted_fake[chosen].sum())
    auc = None
    if reals.any():
        both = chosen | reals
        auc = float(roc_auc_score(chosen[both], score[both]))
    return {"count": count, "detected": detected, "recall": detected / count, "auc": auc}


def breakdown_table(breakdown: dict[str, Any], *, scope: str = "", auc_header: str = "AUC vs reals") -> str:
    """Markdown tables of :func:`fake_breakdown`'s result (empty string when there is none).

    Also renders cross-validation's pooled breakdown, whose rows carry `auc_mean` / `auc_std`
    over folds instead of one `auc` (`scope` and `auc_header` name that in the headers).
    """
    if not breakdown:
        return ""
    lines = []
    for kind in ("difficulty", "region"):
        lines += [
            f"| fakes by {kind}{scope} | count | detected | recall | {auc_header} |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in breakdown[kind].items():
            recall = "–" if row["recall"] is None else f"{row['recall']:.3f}"
            lines.append(f"| {name} | {row['count']} | {row['detected']} | {recall} | {_auc_cell(row)} |")
        lines.append("")
    return "\n".join(lines)


def _auc_cell(row: dict[str, Any]) -> str:
    auc, spread = (row["auc_mean"], row["auc_std"]) if "auc_mean" in row else (row["auc"], None)
    if auc is None:
        return "–"
    return f"{auc:.3f}" if spread is None else f"{auc:.3f} ± {spread:.3f}"


def region_head_report(
    paths: Sequence[str],
    y_true: np.ndarray,
    region_probs: np.ndarray,
    class_names: Sequence[str],
    fake_class: str,
) -> dict[str, Any]:
    """How well an auxiliary region head names the edited regions: per-region AUC.

    The targets are the file names' (CIPLAB fakes) and "nothing edited" for reals; other fakes
    are left out. Returns `{region: {"auc", "positives", "images"}}`, or {} without targets.
    """
    if fake_class not in class_names:
        return {}
    fake = list(class_names).index(fake_class)
    targets = np.full((len(paths), len(REGIONS)), -1.0)
    for i, path in enumerate(paths):
        if y_true[i] != fake:
            targets[i] = 0.0
        elif (label := parse_region_name(path)) is not None:
            targets[i] = np.array(label.edited, float)
    out = {}
    for r, region in enumerate(REGIONS):
        known = targets[:, r] >= 0
        positives = int((targets[known, r] == 1).sum())
        if positives == 0 or positives == int(known.sum()):
            continue
        auc = float(roc_auc_score(targets[known, r], region_probs[known, r]))
        out[region] = {"auc": auc, "positives": positives, "images": int(known.sum())}
    return out
