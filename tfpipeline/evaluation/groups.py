"""Per-group results (bias and fairness): `tfpipeline evaluate RUN --groups FILE.csv`.

A model trained on biased data reproduces the bias: one overall accuracy can hide a group the
detector fails. The groups file names a group for each image (`path,group`, several group
columns allowed, e.g. `path,skin_tone,age`). For every group column this reports, per group:
support, accuracy, true-positive rate (recall of the positive class), false-positive rate and
ROC AUC, each with a bootstrap 95 % confidence interval (fairlearn's MetricFrame, 1,000
resamples, seeded), plus the largest gaps between groups: the equalised-odds difference (the
larger of the TPR and FPR gaps) and the demographic-parity difference (the gap in the share
predicted positive). Groups smaller than `min_size`, or without both classes, are listed as too
small to measure rather than dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfpipeline.errors import UserError

log = logging.getLogger(__name__)
MIN_GROUP_SIZE = 20
BOOTSTRAP = 1000


def read_groups(path: str | Path, files: Sequence[str]) -> pd.DataFrame:
    """The group columns of `path` for `files` (rows in `files` order; NaN where unnamed).

    Rows are matched to files by real path; a relative path in the CSV is taken relative to the
    CSV's folder, then, failing that, matched by the end of the file's path.

    Raises:
        UserError: the file cannot be read, has no `path` column or no group column.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"--groups {path}: cannot read it as CSV ({exc})") from None
    if "path" not in table.columns:
        raise UserError(f"--groups {path}: needs a 'path' column (found: {', '.join(table.columns)})")
    columns = [c for c in table.columns if c != "path"]
    if not columns:
        raise UserError(f"--groups {path}: needs at least one group column beside 'path'")
    by_real = {str(Path(f).resolve()): i for i, f in enumerate(files)}
    out = pd.DataFrame(index=range(len(files)), columns=columns, dtype=object)
    unmatched = 0
    for _, row in table.iterrows():
        index = _match(str(row["path"]), path.parent, by_real, files)
        if index is None:
            unmatched += 1
            continue
        out.loc[index, columns] = row[columns].values
    if unmatched:
        log.warning("--groups %s: %d row(s) name files that are not in the evaluated split", path, unmatched)
    out.attrs["unmatched"] = unmatched
    return out


def _match(name: str, base: Path, by_real: dict[str, int], files: Sequence[str]) -> int | None:
    candidate = Path(name) if Path(name).is_absolute() else base / name
    found = by_real.get(str(candidate.resolve()))
    if found is not None:
        return found
    suffix = "/" + name.lstrip("./")
    matches = [i for i, f in enumerate(files) if f.endswith(suffix)]
    return matches[0] if len(matches) == 1 else None


def group_report(
    groups: pd.DataFrame,
    y_true: np.ndarray,
    probs: np.ndarray,
    rule: Any,
    *,
    min_size: int = MIN_GROUP_SIZE,
    seed: int = 101,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, Any]:
    """Per-group metrics with bootstrap CIs and the largest gaps, per group column.

    Args:
        groups: from :func:`read_groups` (one column per grouping).
        y_true / probs: class indices and (N, 2) probabilities of the evaluated split.
        rule: the run's binary decision rule (the positive class defines TPR and FPR).
        min_size: groups with fewer images are listed as too small, without metrics.
        seed: seeds the bootstrap.
        bootstrap: resamples per confidence interval.

    Returns:
        `{column: {"groups": {name: {...}}, "too_small": [...], "equalized_odds_difference",
        "demographic_parity_difference", "largest_gap": {...}}, "unmatched_rows": n}`.
    """
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    if not rule.binary:
        raise UserError("--groups reports true- and false-positive rates, which need a two-class model")
    positive = (np.asarray(y_true) == rule.positive_index).astype(int)
    predicted = (rule.predict(probs) == rule.positive_index).astype(int)
    score = probs[:, rule.positive_index]
    report: dict[str, Any] = {"unmatched_rows": int(groups.attrs.get("unmatched", 0))}
    for column in groups.columns:
        named = groups[column].notna().to_numpy()
        sizes = groups.loc[named, column].value_counts()
        measurable = [
            g for g, n in sizes.items()
            if n >= min_size and 0 < positive[named & (groups[column] == g).to_numpy()].sum() < n
        ]  # fmt: skip
        keep = named & groups[column].isin(measurable).to_numpy()
        entry: dict[str, Any] = {
            "too_small": sorted(str(g) for g in sizes.index if g not in measurable),
            "sizes": {str(g): int(n) for g, n in sizes.items()},
            "groups": {},
        }
        if len(measurable) >= 1:
            features = groups.loc[keep, column].to_numpy()
            metrics = {
                "accuracy": accuracy_score,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
            }
            frame = MetricFrame(
                metrics=metrics, y_true=positive[keep], y_pred=predicted[keep], sensitive_features=features,
                n_boot=bootstrap, ci_quantiles=[0.025, 0.975], random_state=seed,
            )  # fmt: skip
            auc = MetricFrame(
                metrics={"auc": _auc}, y_true=positive[keep], y_pred=score[keep],
                sensitive_features=features, n_boot=bootstrap, ci_quantiles=[0.025, 0.975], random_state=seed,
            )  # fmt: skip
            values = pd.concat([frame.by_group, auc.by_group], axis=1)
            low = pd.concat([frame.by_group_ci[0], auc.by_group_ci[0]], axis=1)
            high = pd.concat([frame.by_group_ci[1], auc.by_group_ci[1]], axis=1)
            for group in values.index:
                entry["groups"][str(group)] = {
                    "support": int(sizes[group]),
                    **{
                        m: _interval(values.loc[group, m], low.loc[group, m], high.loc[group, m])
                        for m in values.columns
                    },
                }
            if len(measurable) >= 2:
                entry["equalized_odds_difference"] = float(
                    equalized_odds_difference(positive[keep], predicted[keep], sensitive_features=features)
                )
                entry["demographic_parity_difference"] = float(
                    demographic_parity_difference(
                        positive[keep], predicted[keep], sensitive_features=features
                    )
                )
                entry["largest_gap"] = _largest_gap(entry["groups"])
        report[column] = entry
    return report


def _auc(y_true, y_score) -> float:
    """ROC AUC, or NaN for a (bootstrap) sample holding one class only."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, y_score)) if 0 < np.sum(y_true) < len(y_true) else float("nan")


def _interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": float(value), "low": float(low), "high": float(high)}


def _largest_gap(groups: dict[str, dict]) -> dict[str, Any]:
    """The metric whose best and worst group differ most, with both groups."""
    best = None
    for metric in ("accuracy", "tpr", "fpr", "auc"):
        values = {g: row[metric]["value"] for g, row in groups.items()}
        high, low = max(values, key=values.get), min(values, key=values.get)
        gap = values[high] - values[low]
        if best is None or gap > best["gap"]:
            best = {"metric": metric, "gap": gap, "highest": high, "lowest": low}
    return best


def plot_groups(report: dict[str, Any]) -> Any:
    """One panel per group column: accuracy, TPR, FPR and AUC per group with 95 % intervals."""
    from matplotlib.figure import Figure

    columns = [c for c, entry in report.items() if isinstance(entry, dict) and entry.get("groups")]
    figure = Figure(figsize=(7.5, 3.4 * max(1, len(columns))), layout="constrained")
    axes = figure.subplots(max(1, len(columns)), 1, squeeze=False)[:, 0]
    metrics = ("accuracy", "tpr", "fpr", "auc")
    for ax, column in zip(axes, columns, strict=False):
        groups = report[column]["groups"]
        names = list(groups)
        width = 0.8 / len(metrics)
        for m, metric in enumerate(metrics):
            values = np.array([groups[g][metric]["value"] for g in names])
            lows = values - np.array([groups[g][metric]["low"] for g in names])
            highs = np.array([groups[g][metric]["high"] for g in names]) - values
            x = np.arange(len(names)) + (m - 1.5) * width
            ax.bar(x, values, width, yerr=[lows, highs], capsize=2, label=metric.upper() if m else "accuracy")
        ax.set_xticks(np.arange(len(names)), [f"{g}\n(n={groups[g]['support']})" for g in names])
        ax.set_ylim(0, 1.05)
        gap = report[column].get("largest_gap")
        title = f"by {column}"
        if gap:
            title += f": largest gap {gap['metric']} {gap['gap']:.3f} ({gap['highest']} vs {gap['lowest']})"
        ax.set_title(title, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", ncols=4, loc="lower right")
    return figure
