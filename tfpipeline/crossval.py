"""`tfpipeline cv`: stratified k-fold cross-validation over train+val, so a small validation set
is not over-read.

Fold k trains the same configuration with `--fold k/N`: its train and validation images are fold
k's parts of a stratified, seeded N-fold partition of the data's train+val images (the test
split, when there is one, is never touched). Every fold is an ordinary run folder under
`OUT/runs/`; the decoded pixels are shared between folds by the pixel cache. The summary is one
row per fold (AUC, accuracy, F1, training seconds) plus the mean and standard deviation, and,
when the fakes are named like CIPLAB's, their detection per difficulty and per edited region over
all folds (every image is held out exactly once, so the counts cover train+val).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfpipeline.config import RunConfig
from tfpipeline.config_io import to_dict, write_yaml
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.evaluation.breakdown import breakdown_table
from tfpipeline.evaluation.metrics import classification_metrics

FOLD_METRICS = ("roc_auc", "accuracy", "f1", "pr_auc")
CROSSFIT_METRICS = ("threshold_crossfit", "accuracy_crossfit", "f1_crossfit")


@dataclass
class CrossValidation:
    """What `run_cv` produced: the per-fold table, its mean/std and where it is written."""

    table: pd.DataFrame
    summary: dict[str, Any]
    out_dir: Path

    def markdown(self) -> str:
        order = ("fold", *FOLD_METRICS, *CROSSFIT_METRICS, "train_seconds", "run")
        columns = [c for c in order if c in self.table]
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for _, row in self.table.iterrows():
            lines.append("| " + " | ".join(_cell(row[c], c) for c in columns) + " |")
        for stat in ("mean", "std"):
            values = [stat] + [_cell(self.summary[stat].get(c), c) for c in columns[1:]]
            lines.append("| " + " | ".join(values) + " |")
        return "\n".join(lines)


def _cell(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "train_seconds" else f"{value:.4f}"
    return str(value)


def last_epoch_only(config: RunConfig) -> tuple[RunConfig, str]:
    """`config` scored on its last epoch, and a sentence saying whether that changed anything.

    In a fold, the validation part IS the held-out data the estimate is computed on. Keeping
    the best epoch (`--checkpoint best`) or stopping early chooses the epoch by that same data,
    which makes every fold's score, and so the mean, optimistic. Cross-validation therefore
    always trains the full number of epochs and scores the last one.
    """
    changed = []
    if config.train.checkpoint == "best":
        changed.append("--checkpoint best")
    if config.train.early_stopping:
        changed.append(f"--early-stopping {config.train.early_stopping}")
    if not changed:
        return config, "last epoch"
    train = dataclasses.replace(config.train, checkpoint="last", early_stopping=0)
    reason = (
        f"last epoch, not {' / '.join(changed)}: those choose the epoch on the held-out fold itself "
        "and would overstate the estimate"
    )
    return dataclasses.replace(config, train=train), reason


def run_cv(config: RunConfig, folds: int = 5, *, out: str | Path | None = None, recipe: dict | None = None):
    """Train `config` on every fold and summarise the validation metrics.

    Args:
        config: the configuration to cross-validate (its `data.fold` must be empty).
        folds: number of folds N (>= 2).
        out: output folder (default `<run_dir>/cv-<model>-<time>`): `runs/` (a run folder per
            fold), `folds.csv`, `summary.json`, `summary.md`, `config.yaml`.
        recipe: the recipe the config came from (recorded with each run).

    Every fold is scored on its last epoch (:func:`last_epoch_only`); the summary says so.

    Raises:
        UserError: `folds` < 2, a class with fewer images than folds, or any training problem.
    """
    from tfpipeline.workflow import run_training

    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    if config.data.fold:
        raise UserError("cv chooses the folds itself; drop --fold")
    config, selection = last_epoch_only(config)
    if selection != "last epoch":
        print(f"[cv] {selection}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path(config.train.run_dir) / f"cv-{config.model.name}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(out_dir / "config.yaml", to_dict(config))
    rows, breakdowns, held_out = [], [], []
    for k in range(1, folds + 1):
        fold_config = dataclasses.replace(
            config,
            data=dataclasses.replace(config.data, fold=f"{k}/{folds}"),
            train=dataclasses.replace(config.train, run_dir=str(out_dir / "runs")),
        )
        print(f"\n[cv] fold {k}/{folds}", flush=True)
        trained = run_training(fold_config, recipe=recipe)
        class_names = list(trained.bundle.info.class_names)
        val = trained.metrics["val"]
        if val.get("breakdown"):
            breakdowns.append(val["breakdown"])
        held_out.append((trained.rule, pd.read_csv(trained.run.path / "predictions_val.csv")))
        rows.append(
            {
                "fold": k,
                **{name: val.get(name) for name in FOLD_METRICS if name in val},
                "val_images": val["num_samples"],
                "train_seconds": round(trained.train_seconds, 1),
                "run": str(trained.run.path),
            }
        )
        pd.DataFrame(rows).to_csv(out_dir / "folds.csv", index=False)  # partial results survive a stop
    table = pd.DataFrame(rows)
    crossfit = crossfit_threshold_metrics(held_out, class_names)
    if crossfit:
        table = pd.concat([table, pd.DataFrame(crossfit)], axis=1)
        table.to_csv(out_dir / "folds.csv", index=False)
    numeric = [c for c in (*FOLD_METRICS, *CROSSFIT_METRICS, "train_seconds") if c in table]
    summary = {
        "folds": folds,
        "model": config.model.name,
        "mean": {c: float(table[c].mean()) for c in numeric},
        "std": {c: float(table[c].std(ddof=1)) for c in numeric},
        "total_train_seconds": float(table["train_seconds"].sum()),
        "epoch_selection": selection,
    }
    if breakdowns:
        summary["breakdown"] = pooled_breakdown(breakdowns)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    result = CrossValidation(table=table, summary=summary, out_dir=out_dir)
    crossfit_note = (
        f"\n\nThe `{config.train.threshold}` threshold is chosen on validation scores: `accuracy` and `f1` "
        "use each fold's own (chosen on the fold they score, so optimistic); the `_crossfit` columns use "
        "one chosen on the other folds' held-out predictions."
        if crossfit
        else ""
    )
    (out_dir / "summary.md").write_text(
        f"# {folds}-fold cross-validation: {config.model.name}\n\n"
        f"Each fold scored on its {selection}.{crossfit_note}\n\n{result.markdown()}\n"
        + pooled_breakdown_table(summary.get("breakdown", {}))
    )
    return result


def crossfit_threshold_metrics(
    held_out: list[tuple[DecisionRule, pd.DataFrame]], class_names: list[str]
) -> list[dict[str, float]]:
    """Each fold's accuracy and F1 at a threshold chosen without that fold.

    A `tuned`, `accuracy`, `recall:R` or `fpr:F` threshold is resolved on validation predictions,
    which in a fold are the held-out images themselves, so the fold's own accuracy and F1 are optimistic
    (as a best epoch would be). Here fold k's threshold is resolved, by the same policy, on the
    pooled held-out predictions of the other folds (every image there scored by a model that
    never trained on it) and applied to fold k: the accuracy a threshold fixed in advance gets.

    Args:
        held_out: per fold, its resolved decision rule and `predictions_val.csv` table.
        class_names: the class order of the tables' `p_<class>` columns.

    Returns:
        One `{threshold_crossfit, accuracy_crossfit, f1_crossfit}` per fold; empty when the
        policy is not chosen on validation data (a number, `prior`) or the task is not binary.
    """
    if not held_out or not held_out[0][0].fitted_on_validation:
        return []
    columns = [f"p_{name}" for name in class_names]

    def labels_and_probs(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return table["label"].map(class_names.index).to_numpy(), table[columns].to_numpy()

    rows = []
    for k, (rule, table) in enumerate(held_out):
        others = pd.concat([other for j, (_, other) in enumerate(held_out) if j != k])
        other_true, other_probs = labels_and_probs(others)
        chosen = dataclasses.replace(rule, value=None).resolve(
            train_prior=None, val_true=other_true, val_scores=other_probs
        )
        fold_true, fold_probs = labels_and_probs(table)
        scored = classification_metrics(fold_true, fold_probs, class_names, rule=chosen)
        rows.append(
            {
                "threshold_crossfit": chosen.value,
                "accuracy_crossfit": scored["accuracy"],
                "f1_crossfit": scored["f1"],
            }
        )
    return rows


def pooled_breakdown(breakdowns: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' per-difficulty / per-region detection (:func:`fake_breakdown`) over all folds.

    Counts and detections are summed (each fake is held out by exactly one fold, and judged by
    that fold's own decision threshold), so `recall` is the share of all fakes caught; the AUC
    of a group against the reals is averaged over the folds that have the group (mean and std),
    since scores of different folds' models are not on one scale.
    """
    pooled: dict[str, Any] = {}
    for kind in ("difficulty", "region"):
        pooled[kind] = {}
        for name in breakdowns[0][kind]:
            rows = [b[kind][name] for b in breakdowns if name in b.get(kind, {})]
            count = sum(r["count"] for r in rows)
            detected = sum(r["detected"] for r in rows)
            aucs = [r["auc"] for r in rows if r["auc"] is not None]
            pooled[kind][name] = {
                "count": count,
                "detected": detected,
                "recall": detected / count if count else None,
                "auc_mean": float(np.mean(aucs)) if aucs else None,
                "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            }
    return pooled


def pooled_breakdown_table(pooled: dict[str, Any]) -> str:
    """Markdown tables of :func:`pooled_breakdown` (empty string without one)."""
    if not pooled:
        return ""
    return "\n" + breakdown_table(pooled, scope=" (all folds)", auc_header="AUC vs reals (folds)")
