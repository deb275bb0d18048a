"""Run a hyperparameter search: tuner construction, resume, time budget, flat memory.

Project layout (`<directory>/<project>/`): `search.json` (what was searched: model, tuner,
objective, space, base config; a resumed search must match it), `keras_tuner/` (KerasTuner's
own state: oracle.json, trial_*/trial.json, Hyperband weights; large, not for git) and the
exports written by :mod:`tfpipeline.tuning.results`.

Resume (KerasTuner 1.4.8 behaviour, checked in the tests): re-running reloads the oracle; finished
trials are not redone; a trial that was RUNNING when the process died is in `ongoing_trials` and
is re-queued with the same values. Fixed here: a RUNNING trial missing from `ongoing_trials`
(killed between KerasTuner's two state writes) is re-queued too, a re-queued trial's partial
metrics are cleared so the re-run starts clean, and GridSearch's position in the grid
(`_ordered_ids`, `_populate_next`, not saved by KerasTuner, keras-tuner#1055) is saved.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import metrics_tracking, tuner_utils
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.engine.tuner import maybe_distribute
from keras_tuner.src.tuners.gridsearch import LinkedList

import tfpipeline
from tfpipeline.config import RunConfig, to_dict
from tfpipeline.errors import UserError
from tfpipeline.training.fit import seed_everything
from tfpipeline.training.metrics import monitor_metric
from tfpipeline.tuning import distributed, results
from tfpipeline.tuning import space as space_module
from tfpipeline.tuning.hypermodel import PipelineHyperModel, TrialData

TUNERS = ("random", "bayesian", "hyperband", "grid")
STATE_DIR = "keras_tuner"
RUNNING, COMPLETED, STOPPED = (
    trial_module.TrialStatus.RUNNING,
    trial_module.TrialStatus.COMPLETED,
    trial_module.TrialStatus.STOPPED,
)


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


@dataclass
class TrialEvent:
    """Passed to hooks: `begin`, `epoch` (with logs) and `end` (with status and metrics)."""

    kind: str
    trial_id: str
    values: dict[str, Any]
    epoch: int | None = None
    status: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    project: Path
    role: str | None
    objective: str
    direction: str
    trials_run: int  # by this process
    stopped_by_budget: bool
    exports: results.Exports | None


def objective_direction(name: str) -> str:
    return "min" if "loss" in name or "error" in name else "max"


def project_path(settings: SearchSettings, model: str) -> Path:
    return Path(settings.directory) / (settings.project_name or f"{model}_{settings.tuner}")


# --------------------------------------------------------------------------- oracles


class _SearchOracle:
    """Mixin for KerasTuner oracles: time budget and clean resume of interrupted trials."""

    deadline: float | None = None
    budget_exhausted = False

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        if (
            self.deadline is not None
            and time.monotonic() >= self.deadline
            and tuner_id not in self.ongoing_trials
        ):
            self.budget_exhausted = True
            self.tuner_ids.discard(tuner_id)
            return trial_module.Trial(self.get_space(), status=STOPPED)
        return super().create_trial(tuner_id)

    def reload(self):
        super().reload()
        queued = set(self._retry_queue)
        for trial_id, trial in sorted(self.trials.items()):
            if trial.status == RUNNING and trial_id not in queued:
                self._retry_queue.append(trial_id)
        for trial_id in self._retry_queue:  # start the re-run from scratch
            trial = self.trials[trial_id]
            trial.metrics, trial.score, trial.best_step = metrics_tracking.MetricsTracker(), None, 0
        self.recovered = sorted(self._retry_queue)


class _GridState:
    """Saves GridSearchOracle's place in the grid, which KerasTuner 1.4.8 loses on reload."""

    def get_state(self):
        state = super().get_state()
        order, index = [], self._ordered_ids._next_index[None]
        while index is not None:
            order.append(self._ordered_ids._memory[index])
            index = self._ordered_ids._next_index[index]
        state["grid_order"], state["grid_populate_next"] = order, list(self._populate_next)
        return state

    def set_state(self, state):
        super().set_state(state)
        self._ordered_ids = LinkedList()
        for trial_id in state.get("grid_order", []):
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(state.get("grid_populate_next", []))


def make_oracle(settings: SearchSettings, objective: keras_tuner.Objective, seed: int, epochs: int):
    oracles = keras_tuner.oracles
    common = {"objective": objective, "seed": seed, "max_consecutive_failed_trials": 3}
    trials = settings.max_trials
    if settings.tuner == "random":
        cls, kwargs = oracles.RandomSearchOracle, {"max_trials": trials or 10}
    elif settings.tuner == "bayesian":
        cls, kwargs = oracles.BayesianOptimizationOracle, {"max_trials": trials or 10}
        kwargs["num_initial_points"] = max(2, (trials or 10) // 3)
    elif settings.tuner == "grid":
        cls, kwargs = oracles.GridSearchOracle, {"max_trials": trials}
    elif settings.tuner == "hyperband":
        cls, kwargs = (
            oracles.HyperbandOracle,
            {"max_epochs": settings.max_epochs or epochs, "factor": settings.factor},
        )
    else:
        raise UserError(f"--tuner must be one of {', '.join(TUNERS)}; got '{settings.tuner}'")
    bases = (_SearchOracle, _GridState, cls) if settings.tuner == "grid" else (_SearchOracle, cls)
    oracle = type(f"Pipeline{cls.__name__}", bases, {})(**common, **kwargs)
    if settings.tuner == "hyperband" and trials:
        oracle.max_trials = trials  # an extra cap on Hyperband's own schedule
    return oracle


# --------------------------------------------------------------------------- tuner


def fresh_session() -> None:
    keras.backend.clear_session()
    gc.collect()


class PipelineTuner(keras_tuner.Tuner):
    """A Tuner for any oracle: trains trials through tfpipeline's build/fit, one at a time.

    Per trial: clear the Keras session, seed, build (under the distribution strategy), fit,
    drop the model. Only Hyperband keeps per-trial weights (its later rounds continue them).
    """

    def __init__(self, oracle, hypermodel: PipelineHyperModel, *, hooks=(), log=print, dist=None, **kwargs):
        self.hooks: Sequence[Callable[[TrialEvent], None]] = hooks
        self.log = log
        self.dist = dist or distributed.DistributedSettings()
        self.trials_run = 0
        self.serve_report = None
        self._metrics: dict[str, float] = {}
        super().__init__(oracle, hypermodel, **kwargs)

    def _populate_initial_space(self):
        # Declare the space without building a model (KerasTuner would build one here).
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _emit(self, event: TrialEvent) -> None:
        for hook in self.hooks:
            hook(event)

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        values = dict(hp.values)
        objective = self.oracle.objective
        self._metrics = {}
        self._emit(TrialEvent("begin", trial.trial_id, values))
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if not k.startswith("tuner/"))
        epochs = (
            f" epochs {values['tuner/initial_epoch']}->{values['tuner/epochs']}"
            if "tuner/epochs" in values
            else ""
        )
        self.log(f"trial {trial.trial_id}{epochs}: {shown}")
        fresh_session()
        config = self.hypermodel.config(values)
        seed_everything(config.data.seed, config.train.deterministic)
        model = None
        try:
            with maybe_distribute(self.distribution_strategy):
                model = self.hypermodel.build(hp)
                if values.get("tuner/trial_id"):
                    model.load_weights(self._get_checkpoint_fname(values["tuner/trial_id"]))
            callbacks = []
            if "tuner/epochs" in values:  # Hyperband continues these weights in later rounds
                path = self._get_checkpoint_fname(trial.trial_id)
                callbacks.append(tuner_utils.SaveBestEpoch(objective=objective, filepath=path))

            def on_epoch(epoch: int, logs: dict) -> None:
                self._emit(TrialEvent("epoch", trial.trial_id, values, epoch=epoch, metrics=logs))

            self._metrics = self.hypermodel.fit(
                hp, model, objective=objective, callbacks=callbacks, on_epoch=on_epoch
            )
        finally:
            del model
            fresh_session()
        self.trials_run += 1
        return self._metrics

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        metrics = self._metrics
        name = self.oracle.objective.name
        if trial.status == COMPLETED and name in metrics:
            self.log(
                f"trial {trial.trial_id} done: {name}={metrics[name]:.4f} in {metrics.get('seconds', 0):.1f}s"
            )
        else:
            reason = (trial.message or "").strip().splitlines()[-1:] or ["?"]
            self.log(f"trial {trial.trial_id} {trial.status}: {reason[0]}")
        self._emit(
            TrialEvent(
                "end",
                trial.trial_id,
                dict(trial.hyperparameters.values),
                status=trial.status,
                metrics=dict(metrics),
            )
        )

    def search(self, *args, **kwargs):
        if dist_utils.is_chief_oracle():
            self.save()
            self.serve_report = distributed.serve(self.oracle, self.dist)
            return
        if self._is_worker():
            import grpc

            try:
                return super().search(*args, **kwargs)
            except grpc.RpcError as exc:
                raise UserError(
                    f"lost the chief at {distributed.chief_address()} ({exc.code().name}); "
                    "the search may be over, or the chief stopped"
                ) from None
        return super().search(*args, **kwargs)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- search


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
    oracle = make_oracle(settings, objective, base.data.seed, base.train.epochs)
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
    return SearchResult(project, role, name, objective.direction, tuner.trials_run, budget, exports)


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
    done = sum(1 for t in oracle.trials.values() if t.status != RUNNING)
    if oracle.trials:
        recovered = getattr(oracle, "recovered", [])
        again = f"; interrupted trial(s) {', '.join(recovered)} will re-run" if recovered else ""
        log(f"resuming {tuner.project_dir}: {done} trial(s) finished{again}")
    log(f"search space ({settings.tuner}, objective {oracle.objective.name} {oracle.objective.direction}):")
    for line in space_module.describe(space):
        log(f"  {line}")
