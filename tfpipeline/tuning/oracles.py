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
- GridSearch's place in the grid is saved and restored.

KerasTuner internals are reached only through :mod:`~tfpipeline.tuning.kt_compat`.

The time budget: once `deadline` has passed, `create_trial` answers STOPPED (to local tuners
and distributed workers alike); running trials finish and are recorded. The trial quota works
the same way and lets the CLI hand a long search over to fresh processes.
"""

from __future__ import annotations

import time

import keras_tuner

from tfpipeline.errors import UserError
from tfpipeline.tuning import kt_compat

TUNERS = ("random", "bayesian", "hyperband", "grid")
RUNNING, STOPPED = kt_compat.TrialStatus.RUNNING, kt_compat.TrialStatus.STOPPED


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
                return kt_compat.Trial(self.get_space(), status=STOPPED)
            search_done = self.max_trials is not None and len(self.trials) >= self.max_trials
            if self.trial_quota is not None and self._started >= self.trial_quota and not search_done:
                self.quota_reached = True
                self.tuner_ids.discard(tuner_id)
                return kt_compat.Trial(self.get_space(), status=STOPPED)
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
        finished = (kt_compat.TrialStatus.COMPLETED, kt_compat.TrialStatus.FAILED)
        queue = [t for t in kt_compat.retry_queue(self) if self.trials[t].status not in finished]
        queued = set(queue)
        for trial_id, trial in sorted(self.trials.items()):
            if trial.status == RUNNING and trial_id not in queued:
                queue.append(trial_id)
        for trial_id in queue:  # start the re-run from scratch
            trial = self.trials[trial_id]
            trial.metrics, trial.score, trial.best_step = kt_compat.fresh_metrics(), None, 0
        kt_compat.set_retry_queue(self, queue)
        self.recovered = sorted(queue)


class _GridState:
    """Saves GridSearchOracle's place in the grid, which KerasTuner 1.4.8 loses on reload."""

    def get_state(self):
        return {**super().get_state(), **kt_compat.grid_state(self)}

    def set_state(self, state):
        super().set_state(state)
        kt_compat.restore_grid_state(self, state)


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
