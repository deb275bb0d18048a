"""KerasTuner oracles with a time budget and a clean resume.

Resume, as KerasTuner 1.4.8 does it (checked in tests/test_tuning.py): re-running the same search
reloads the oracle from `oracle.json` and `trial_*/trial.json`; finished trials are not redone;
a trial that was RUNNING when the process died is listed in `ongoing_trials` and re-queued with
the same id and values. Fixed here (keras-tuner #439/#987/#1055 territory):

- a finished trial still listed in `ongoing_trials` (KerasTuner saves `oracle.json` before it
  drops the trial from that list; a distributed chief never saves again) is not re-run;
- a RUNNING trial missing from `ongoing_trials` (killed between KerasTuner's two state writes)
  is re-queued too, instead of counting as a trial forever;
- a re-queued trial's partial metrics are cleared, so the re-run starts clean;
- GridSearch's place in the grid (`_ordered_ids`, `_populate_next`) is saved and restored.

The time budget: once `deadline` has passed, `create_trial` answers STOPPED (to local tuners
and distributed workers alike); running trials finish and are recorded. The trial quota works
the same way and lets the CLI hand a long search over to fresh processes.
"""

from __future__ import annotations

import time

import keras_tuner
from keras_tuner.src.engine import metrics_tracking
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.tuners.gridsearch import LinkedList

from tfpipeline.errors import UserError

TUNERS = ("random", "bayesian", "hyperband", "grid")
RUNNING, STOPPED = trial_module.TrialStatus.RUNNING, trial_module.TrialStatus.STOPPED


def objective_direction(name: str) -> str:
    """`min` for losses and errors, `max` for everything else."""
    return "min" if "loss" in name or "error" in name else "max"


class _SearchOracle:
    """Mixin for KerasTuner oracles: time budget and clean resume of interrupted trials."""

    deadline: float | None = None
    budget_exhausted = False
    # New trials this process may start before it hands over to a fresh process (see
    # `tfpipeline tune --trials-per-process`); None: no limit.
    trial_quota: int | None = None
    quota_reached = False
    _started = 0

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        if tuner_id not in self.ongoing_trials:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.budget_exhausted = True
                self.tuner_ids.discard(tuner_id)
                return trial_module.Trial(self.get_space(), status=STOPPED)
            search_done = self.max_trials is not None and len(self.trials) >= self.max_trials
            if self.trial_quota is not None and self._started >= self.trial_quota and not search_done:
                self.quota_reached = True
                self.tuner_ids.discard(tuner_id)
                return trial_module.Trial(self.get_space(), status=STOPPED)
        trial = super().create_trial(tuner_id)
        if trial.status == RUNNING:
            self._started += 1
        return trial

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        # KerasTuner saves before it drops the trial from `ongoing_trials`; a chief killed now
        # would re-run a finished trial on resume. Save the final state.
        self.save()

    def reload(self):
        super().reload()
        finished = (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)
        self._retry_queue = [t for t in self._retry_queue if self.trials[t].status not in finished]
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


def make_oracle(
    tuner: str,
    objective: keras_tuner.Objective,
    *,
    seed: int,
    max_trials: int | None = None,
    max_epochs: int = 10,
    factor: int = 3,
):
    """The KerasTuner oracle of `tuner`, with the budget/resume fixes of this module."""
    oracles = keras_tuner.oracles
    common = {"objective": objective, "seed": seed, "max_consecutive_failed_trials": 3}
    trials = max_trials
    if tuner == "random":
        cls, kwargs = oracles.RandomSearchOracle, {"max_trials": trials or 10}
    elif tuner == "bayesian":
        cls, kwargs = oracles.BayesianOptimizationOracle, {"max_trials": trials or 10}
        kwargs["num_initial_points"] = max(2, (trials or 10) // 3)
    elif tuner == "grid":
        cls, kwargs = oracles.GridSearchOracle, {"max_trials": trials}
    elif tuner == "hyperband":
        cls, kwargs = (
            oracles.HyperbandOracle,
            {"max_epochs": max_epochs, "factor": factor},
        )
    else:
        raise UserError(f"--tuner must be one of {', '.join(TUNERS)}; got '{tuner}'")
    bases = (_SearchOracle, _GridState, cls) if tuner == "grid" else (_SearchOracle, cls)
    oracle = type(f"Pipeline{cls.__name__}", bases, {})(**common, **kwargs)
    if tuner == "hyperband" and trials:
        oracle.max_trials = trials  # an extra cap on Hyperband's own schedule
    return oracle
