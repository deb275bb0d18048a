"""Run a hyperparameter search: settings, project folder, resume checks, export.

Project layout (`<directory>/<project>/`): `search.json` (what was searched: model, tuner,
objective, space, base config; a resumed search must match it), `keras_tuner/` (KerasTuner's
own state: oracle.json, trial_*/trial.json, Hyperband weights; not for git) and the exports
written by :mod:`tfpipeline.tuning.results`. Resume and time budget: :mod:`.oracles`; the
per-trial work (fresh Keras session, build, fit, drop the model): :mod:`.tuner`; data loaded
once per search: :mod:`.hypermodel`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras_tuner

import tfpipeline
from tfpipeline.config import RunConfig
from tfpipeline.config_io import to_dict
from tfpipeline.errors import UserError
from tfpipeline.training.metrics import monitor_metric
from tfpipeline.tuning import distributed, results
from tfpipeline.tuning import space as space_module
from tfpipeline.tuning.hypermodel import PipelineHyperModel, TrialData
from tfpipeline.tuning.oracles import TUNERS, make_oracle, objective_direction
from tfpipeline.tuning.tuner import PipelineTuner, TrialEvent, fresh_session

__all__ = ["SearchResult", "SearchSettings", "TrialEvent", "run_search", "fresh_session"]
STATE_DIR = "keras_tuner"


@dataclass(frozen=True)
class SearchSettings:
    """Everything about a search that is not the base RunConfig (see `tfpipeline tune --help`)."""

    tuner: str = "random"
    max_trials: int | None = None  # default 10 (random, bayesian); grid: the whole grid
    objective: str | None = None  # default val_auc (binary) / val_accuracy
    directory: str = "tuner_results"
    project_name: str | None = None  # default <model>_<tuner>
    space: str | dict | None = None  # --space file or mapping
    time_budget: float | None = None  # minutes; no new trial starts after it
    overwrite: bool = False
    max_epochs: int | None = None  # hyperband: per-trial maximum (default: the base epochs)
    factor: int = 3
    devices: tuple[str, ...] = ()  # MirroredStrategy devices (default: all GPUs when > 1)
    verbose: bool = True
    trial_quota: int | None = None  # start at most this many new trials in this process


@dataclass
class SearchResult:
    project: Path
    role: str | None
    objective: str
    direction: str
    trials_run: int  # by this process
    stopped_by_budget: bool
    exports: results.Exports | None
    stopped_by_quota: bool = False  # more trials remain; continue in a fresh process


def project_path(settings: SearchSettings, model: str) -> Path:
    return Path(settings.directory) / (settings.project_name or f"{model}_{settings.tuner}")


def _differences(old: dict, new: dict, key: str) -> str:
    """`key`, or for the base config the dotted fields that differ, with old -> new values."""
    if key != "base_config" or not isinstance(old.get(key), dict):
        return key
    diffs = []
    for section, fields in new[key].items():
        for name, value in fields.items():
            before = old[key].get(section, {}).get(name)
            if before != value:
                diffs.append(f"{section}.{name} {before!r} -> {value!r}")
    return "base config (" + "; ".join(diffs) + ")"


def _check_project(project: Path, record: dict[str, Any]) -> None:
    """A resumed search must search the same thing; record what this one searches."""
    path = project / "search.json"
    ignored = ("created", "max_trials", "time_budget", "tfpipeline_version")
    if path.is_file() and (project / STATE_DIR).is_dir():
        old = json.loads(path.read_text())
        changed = sorted(
            k for k in set(old) | set(record) if k not in ignored and old.get(k) != record.get(k)
        )
        if changed:
            changed = [_differences(old, record, k) for k in changed]
            raise UserError(
                f"{project} holds a search with a different {', '.join(changed)}; pass --overwrite to "
                "start over, or another --project-name"
            )
        record = {**old, "max_trials": record.get("max_trials")}
    project.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))


def run_search(
    base: RunConfig,
    settings: SearchSettings,
    *,
    dist: distributed.DistributedSettings | None = None,
    hooks: Sequence[Callable[[TrialEvent], None]] = (),
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search `settings.tuner` over the model's space around `base`; export results.

    Raises:
        UserError: bad space/settings, a changed search in an existing project, a default
            configuration that cannot be built, or three failed trials in a row.
    """
    log = log or (print if settings.verbose else (lambda _text: None))
    dist = dist or distributed.DistributedSettings()
    if settings.tuner not in TUNERS:
        raise UserError(f"--tuner must be one of {', '.join(TUNERS)}; got '{settings.tuner}'")
    role = distributed.configure(dist)
    if role == "worker" and settings.verbose:
        worker = distributed.tuner_id()
        log = lambda text: print(f"[{worker}] {text}", flush=True)  # noqa: E731
    project = project_path(settings, base.model.name)
    space = space_module.load_space(base.model.name, settings.space, base)
    if settings.tuner == "grid":
        space_module.check_grid(space)
    if role == "worker":
        distributed.limit_rpc_wait(dist.rpc_timeout)
        distributed.wait_for_chief(dist.rpc_timeout)
    elif settings.overwrite and project.exists():
        shutil.rmtree(project)
    data = TrialData(base)
    name = settings.objective or monitor_metric(data.num_classes)
    objective = keras_tuner.Objective(name, objective_direction(name))
    if role != "worker":
        _check_project(
            project,
            {
                "model": base.model.name,
                "tuner": settings.tuner,
                "objective": name,
                "direction": objective.direction,
                "max_trials": settings.max_trials,
                "max_epochs": settings.max_epochs if settings.tuner == "hyperband" else None,
                "factor": settings.factor if settings.tuner == "hyperband" else None,
                "space": {n: p.declaration() for n, p in space.items()},
                "base_config": to_dict(base),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "tfpipeline_version": tfpipeline.__version__,
            },
        )
    hypermodel = PipelineHyperModel(base, space, data)
    if role != "chief":
        _preflight(hypermodel)
    oracle = make_oracle(
        settings.tuner,
        objective,
        seed=base.data.seed,
        max_trials=settings.max_trials,
        max_epochs=settings.max_epochs or base.train.epochs,
        factor=settings.factor,
    )
    tuner = PipelineTuner(
        oracle,
        hypermodel,
        hooks=hooks,
        log=log,
        dist=dist,
        directory=str(project),
        project_name=STATE_DIR,
        overwrite=False,
        distribution_strategy=distributed.strategy_for(settings.devices) if role != "chief" else None,
    )
    if role != "worker":
        _announce(tuner, space, settings, log)
        oracle.verbose = 0
        if settings.time_budget:
            oracle.deadline = time.monotonic() + settings.time_budget * 60
        if role is None:
            oracle.trial_quota = settings.trial_quota
    try:
        tuner.search()
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        last = str(exc).strip().splitlines()[-1]
        raise UserError(f"search stopped: 3 trials in a row failed; last error: {last}") from None
    exports = None
    if role != "worker":
        exports = results.export(project, oracle, hypermodel, objective, settings.tuner)
    budget = bool(getattr(tuner.oracle, "budget_exhausted", False))
    if budget:
        log(f"time budget of {settings.time_budget:g} min used up: no new trials started")
    quota = bool(getattr(tuner.oracle, "quota_reached", False))
    return SearchResult(project, role, name, objective.direction, tuner.trials_run, budget, exports, quota)


def _preflight(hypermodel: PipelineHyperModel) -> None:
    """Build the default configuration once, so a model that cannot be built fails in seconds."""
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    try:
        hypermodel.build(hp)
    except UserError as exc:
        raise UserError(f"the search space's default configuration cannot be built: {exc}") from None
    finally:
        fresh_session()


def _announce(tuner: PipelineTuner, space: dict, settings: SearchSettings, log) -> None:
    oracle = tuner.oracle
    done = sum(1 for t in oracle.trials.values() if t.status != "RUNNING")
    if oracle.trials:
        recovered = getattr(oracle, "recovered", [])
        again = f"; interrupted trial(s) {', '.join(recovered)} will re-run" if recovered else ""
        log(f"resuming {tuner.project_dir}: {done} trial(s) finished{again}")
    log(f"search space ({settings.tuner}, objective {oracle.objective.name} {oracle.objective.direction}):")
    for line in space_module.describe(space):
        log(f"  {line}")
