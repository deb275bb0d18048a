"""`tfpipeline compare`: learning curves of several runs overlaid, and a table of their results.

Each run gets a label (`--labels`, or the registered model's label for its config: `vanilla`,
`bn`, `dp`, `bn+dp` for small_cnn's batch-norm/dropout switches, the model name otherwise). Output: one
`compare_<metric>.png` per metric (train dashed, val solid, one colour per run), and
`comparison.csv` / `comparison.md` with one row per run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfpipeline.config import RunConfig
from tfpipeline.errors import UserError
from tfpipeline.training.run_folder import RunFolder

DEFAULT_COMPARE_METRICS = ("loss", "accuracy", "auc", "pr_auc", "precision", "recall", "f1")
# column -> markdown header
COLUMNS = {
    "run": "run",
    "model": "model",
    "best_val_auc": "best val AUC",
    "best_val_accuracy": "best val acc",
    "val_accuracy": "val accuracy",
    "val_f1": "val F1",
    "val_precision": "val precision",
    "val_recall": "val recall",
    "threshold": "threshold",
    "best_epoch": "best epoch",
    "epochs": "epochs",
    "median_epoch_seconds": "median s/epoch",
    "trainable_params": "trainable params",
}


def run_label(config: RunConfig) -> str:
    """The model's own short label for a configuration (small_cnn: `vanilla`, `bn`, `dp`, `bn+dp`)."""
    from tfpipeline.models import MODELS

    spec = MODELS.get(config.model.name)
    return spec.run_label(config.model) if spec else config.model.name


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Make labels distinct: repeats become `label-2`, `label-3`, ..."""
    seen: set[str] = set()
    out = []
    for label in labels:
        candidate, n = label, 1
        while candidate in seen:
            n += 1
            candidate = f"{label}-{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


@dataclass
class RunRecord:
    label: str
    path: Path
    history: pd.DataFrame
    row: dict[str, Any]


@dataclass
class Comparison:
    table: pd.DataFrame
    markdown: str
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def read_run(path: str | Path, label: str | None = None) -> RunRecord:
    """A run's history and its comparison row; UserError naming `path` when it is not a run."""
    run = RunFolder.open(path)
    config = run.read_config()
    if not run.history_file.is_file():
        raise UserError(f"{run.path}: no history.csv (did training run?)")
    history = pd.read_csv(run.history_file)
    info = json.loads(run.run_file.read_text()) if run.run_file.is_file() else {}
    metrics = json.loads(run.metrics_file.read_text()) if run.metrics_file.is_file() else {}
    val = metrics.get("val") or {}

    def best(column: str) -> float | None:
        return float(history[column].max()) if column in history and len(history) else None

    seconds = history["epoch_seconds"].median() if "epoch_seconds" in history and len(history) else None
    row = {
        "run": label or run_label(config),
        "model": config.model.name,
        "best_val_auc": best("val_auc"),
        "best_val_accuracy": best("val_accuracy"),
        "val_accuracy": val.get("accuracy"),
        "val_f1": val.get("f1"),
        "val_precision": val.get("precision"),
        "val_recall": val.get("recall"),
        "threshold": (metrics.get("threshold") or {}).get("value"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs": int(info.get("epochs_run") or len(history)),
        "median_epoch_seconds": float(seconds) if seconds is not None else None,
        "trainable_params": info.get("trainable_params"),
        "path": str(run.path),
    }
    return RunRecord(row["run"], run.path, history, row)


def compare_runs(
    paths: Sequence[str | Path],
    *,
    labels: Sequence[str] | None = None,
    out: str | Path | None = None,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Write one overlay figure per metric plus comparison.csv/.md; return the table.

    Args:
        paths: run folders.
        labels: one legend label per run (default: derived from each run's config).
        out: output folder (default: `comparison/` in the current directory).
        metrics: history metrics to plot (default: those of loss, accuracy, auc, pr_auc,
            precision, recall, f1 that some run logged).

    Raises:
        UserError: a path is not a run folder, labels do not match the runs, or an asked-for
            metric is in no run's history.
    """
    from tfpipeline.evaluation.plots import plot_compare_runs, save_figure

    if not paths:
        raise UserError("compare needs at least one run folder")
    if labels is not None and len(labels) != len(paths):
        raise UserError(f"--labels has {len(labels)} label(s) for {len(paths)} run(s)")
    records = [read_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    for record, label in zip(records, unique_labels([r.label for r in records]), strict=True):
        record.label = record.row["run"] = label

    logged = {c for r in records for c in r.history.columns}
    available = sorted({c.removeprefix("val_") for c in logged} - {"epoch", "epoch_seconds", "learning_rate"})
    if metrics:
        missing = [m for m in metrics if m not in logged and f"val_{m}" not in logged]
        if missing:
            raise UserError(
                f"--metrics {', '.join(missing)}: not in any run's history; available: {', '.join(available)}"
            )
        chosen = list(metrics)
    else:
        chosen = [m for m in DEFAULT_COMPARE_METRICS if m in logged or f"val_{m}" in logged]

    # Not next to the runs by default: `compare runs/*` would then trip over it next time.
    out_dir = Path(out) if out is not None else Path("comparison")
    out_dir.mkdir(parents=True, exist_ok=True)
    histories = {r.label: r.history for r in records}
    files = {}
    for metric in chosen:
        figure = plot_compare_runs(histories, metric)
        files[metric] = save_figure(figure, out_dir / f"compare_{_safe(metric)}.png")

    table = pd.DataFrame([r.row for r in records])
    files["csv"] = out_dir / "comparison.csv"
    table.to_csv(files["csv"], index=False)
    markdown = comparison_markdown(table)
    files["markdown"] = out_dir / "comparison.md"
    files["markdown"].write_text(markdown)
    return Comparison(table=table, markdown=markdown, out_dir=out_dir, files=files)


def comparison_markdown(table: pd.DataFrame) -> str:
    """A markdown table of the comparison columns that hold at least one value."""
    columns = [c for c in COLUMNS if c in table and table[c].notna().any()]
    lines = [
        "| " + " | ".join(COLUMNS[c] for c in columns) + " |",
        "|" + "|".join("---" if c in ("run", "model") else "---:" for c in columns) + "|",
    ]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    paths = "\n".join(f"- {row['run']}: `{row['path']}`" for _, row in table.iterrows())
    return "# Run comparison\n\n" + "\n".join(lines) + "\n\nRuns:\n" + paths + "\n"


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if column in ("run", "model"):
        return str(value)
    if column in ("epochs", "best_epoch", "trainable_params"):
        return f"{int(value):,}"
    if column == "median_epoch_seconds":
        return f"{float(value):.2f}"
    return f"{float(value):.4f}"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
