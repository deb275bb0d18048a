"""What a search leaves behind, in `<directory>/<project>/`.

- `trials.csv`: one row per trial: id, status, objective, every hyperparameter (Hyperband's
  epochs/bracket/round too), all validation metrics of the trial's best epoch, best_epoch,
  epochs_run, seconds, and the last line of the error of a failed trial;
- `best.yaml`: the best trial's full RunConfig in the nested form of `config.to_dict`, so
  `tfpipeline train --config best.yaml` trains it as is;
- `objective.png` (objective per trial, in finishing order, with the best-so-far line) and
  `hparams.png` (each hyperparameter against the objective);
- `tensorboard/`: TensorBoard HParams logs (`tensorboard --logdir <project>/tensorboard`);
- `summary.txt`: the leaderboard that `tfpipeline tune --summary` prints.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tfpipeline.config import RunConfig
from tfpipeline.config_io import to_dict
from tfpipeline.errors import UserError
from tfpipeline.evaluation.plots import save_figure

HYPERBAND_COLUMNS = {
    "tuner/epochs": "hb_epochs",
    "tuner/initial_epoch": "hb_initial_epoch",
    "tuner/bracket": "hb_bracket",
    "tuner/round": "hb_round",
    "tuner/trial_id": "hb_continues",
}
TAIL_COLUMNS = ["best_epoch", "epochs_run", "seconds"]


@dataclass
class Exports:
    trials: pd.DataFrame
    trials_csv: Path
    best_yaml: Path | None
    best_config: RunConfig | None
    best_trial: str | None
    best_value: float | None


def trials_table(oracle, space: dict, objective) -> pd.DataFrame:
    """One row per trial of the oracle, in trial-id order."""
    rows = []
    for trial_id in sorted(oracle.trials, key=_id_order):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        row: dict[str, Any] = {"trial_id": trial_id, "status": trial.status}
        row["objective"] = trial.score if trial.status == "COMPLETED" else None
        row.update({name: values.get(name) for name in space})
        row.update({col: values[key] for key, col in HYPERBAND_COLUMNS.items() if key in values})
        metrics = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
        row.update({k: metrics[k] for k in sorted(metrics) if k not in TAIL_COLUMNS})
        row.update({k: metrics.get(k) for k in TAIL_COLUMNS})
        lines = (trial.message or "").strip().splitlines()
        row["error"] = lines[-1] if lines and trial.status != "COMPLETED" else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        tail = [c for c in [*TAIL_COLUMNS, "error"] if c in table]
        table = table[[c for c in table.columns if c not in tail] + tail]
    return table


def _id_order(trial_id: str) -> tuple:
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def export(project: Path, oracle, hypermodel, objective, tuner: str) -> Exports:
    """Write every export of the search from the oracle's trials; return what was written."""
    space = hypermodel.space
    table = trials_table(oracle, space, objective)
    csv_path = project / "trials.csv"
    table.to_csv(csv_path, index=False)
    best = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    best_yaml = best_config = None
    if best:
        trial = best[0]
        best_config = hypermodel.config(trial.hyperparameters.values)
        best_yaml = project / "best.yaml"
        header = (
            f"# best trial {trial.trial_id} of {project.name} ({tuner}): "
            f"{objective.name} = {trial.score:.4f}\n"
            f"# train it: tfpipeline train --config {best_yaml}\n"
        )
        best_yaml.write_text(header + _yaml(to_dict(best_config)))
    completed = table[table["status"] == "COMPLETED"] if len(table) else table
    order = [t for t in oracle.end_order if oracle.trials[t].status == "COMPLETED"]
    if len(completed):
        save_figure(plot_objective(completed, order, objective), project / "objective.png")
        save_figure(plot_hparams(completed, space, objective), project / "hparams.png")
        write_hparams_logs(project / "tensorboard", completed, space)
    (project / "summary.txt").write_text(summary_text(project) + "\n")
    return Exports(
        table,
        csv_path,
        best_yaml,
        best_config,
        best[0].trial_id if best else None,
        float(best[0].score) if best else None,
    )


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def plot_objective(completed: pd.DataFrame, order: list[str], objective) -> Figure:
    """Objective per finished trial (finishing order) and the best-so-far line."""
    by_id = completed.set_index("trial_id")["objective"].astype(float)
    ids = [t for t in order if t in by_id.index] or list(by_id.index)
    values = by_id.loc[ids].to_numpy()
    best = np.minimum.accumulate(values) if objective.direction == "min" else np.maximum.accumulate(values)
    x = np.arange(1, len(values) + 1)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, values, "o", color="tab:blue", label="trial")
    ax.step(x, best, where="post", color="tab:orange", label="best so far")
    for xi, yi, trial_id in zip(x, values, ids, strict=True):
        if len(ids) <= 30:
            ax.annotate(trial_id, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in finishing order)")
    ax.set_ylabel(objective.name)
    ax.set_title(f"{objective.name} per trial ({objective.direction})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_hparams(completed: pd.DataFrame, space: dict, objective) -> Figure:
    """One panel per hyperparameter: its value against the objective."""
    names = list(space) or ["trial_id"]
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    y = completed["objective"].astype(float).to_numpy()
    for ax, name in zip(axes, names, strict=False):
        param = space.get(name)
        column = completed[name] if name in completed else pd.Series([None] * len(completed))
        active = column.notna().to_numpy()
        if param is not None and param.kind != "choice":
            ax.scatter(column[active].astype(float), y[active], s=18)
            if param.sampling == "log":
                ax.set_xscale("log")
        else:
            levels = list(param.values) if param is not None else sorted(column[active].unique())
            index = {str(v): i for i, v in enumerate(levels)}
            xs = [index.get(str(v), -1) for v in column[active]]
            ax.scatter(xs, y[active], s=18)
            ax.set_xticks(range(len(levels)), [str(v) for v in levels], fontsize=8)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.supylabel(objective.name)
    return fig


def write_hparams_logs(root: Path, completed: pd.DataFrame, space: dict) -> None:
    """TensorBoard HParams: the domain once at `root`, one run per finished trial."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    shutil.rmtree(root, ignore_errors=True)
    params = {name: hp_api.HParam(name, _domain(p, hp_api)) for name, p in space.items()}
    metric_names = [
        c for c in completed.columns if c == "objective" or c.startswith("val_") or c == "seconds"
    ]
    with tf.summary.create_file_writer(str(root)).as_default():
        hp_api.hparams_config(hparams=list(params.values()), metrics=[hp_api.Metric(m) for m in metric_names])
    for _, row in completed.iterrows():
        writer = tf.summary.create_file_writer(str(root / f"trial_{row['trial_id']}"))
        with writer.as_default():
            values = {params[n]: _plain(row[n]) for n in params if n in row and _present(row[n])}
            hp_api.hparams(values, trial_id=str(row["trial_id"]))
            for metric in metric_names:
                if _present(row.get(metric)):
                    tf.summary.scalar(metric, float(row[metric]), step=1)
        writer.close()


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _domain(param, hp_api):
    if param.kind == "choice":
        return hp_api.Discrete(list(param.values))
    if param.kind == "int":
        return hp_api.IntInterval(int(param.low), int(param.high))
    return hp_api.RealInterval(float(param.low), float(param.high))


# --------------------------------------------------------------------------- leaderboard


def leaderboard(table: pd.DataFrame, space_names: list[str], direction: str, top: int = 10) -> str:
    """The `top` finished trials, best first: objective, main val metrics, time, values."""
    from tabulate import tabulate

    done = table[table["status"] == "COMPLETED"].copy()
    if not len(done):
        return "(no finished trials yet)"
    done = done.sort_values("objective", ascending=direction == "min").head(top)
    metrics = [c for c in ("val_loss", "val_accuracy", "val_auc") if c in done]
    rows = []
    for rank, (_, row) in enumerate(done.iterrows(), start=1):
        values = ", ".join(f"{n}={_short(row[n])}" for n in space_names if n in row and _present(row[n]))
        epochs = _short(row.get("epochs_run"))
        rows.append(
            [
                rank,
                row["trial_id"],
                f"{row['objective']:.4f}",
                *[f"{row[m]:.4f}" for m in metrics],
                epochs,
                f"{row.get('seconds', float('nan')):.0f}",
                values,
            ]
        )
    headers = ["#", "trial", "objective", *metrics, "epochs", "sec", "hyperparameters"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else str(int(value))
    return str(value)


def summary_text(project: Path, top: int = 10) -> str:
    """Header lines and the leaderboard of a project, from its trials.csv and search.json."""
    csv_path, record_path = project / "trials.csv", project / "search.json"
    if not csv_path.is_file() or not record_path.is_file():
        raise UserError(
            f"{project}: no search results here (no trials.csv / search.json); run `tfpipeline tune` first"
        )
    record = json.loads(record_path.read_text())
    table = pd.read_csv(csv_path)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    statuses = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    lines = [
        f"project {project} ({record.get('tuner')} search of {record.get('model')}, "
        f"objective {record.get('objective')} {record.get('direction')})",
        f"trials: {len(table)} ({statuses or 'none'})",
    ]
    if (project / "best.yaml").is_file():
        lines.append(f"best config: {project / 'best.yaml'}")
    lines += ["", leaderboard(table, list(record.get("space", {})), record.get("direction", "max"), top)]
    return "\n".join(lines)
