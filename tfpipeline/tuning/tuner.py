"""The Tuner: runs trials through tfpipeline's own build/fit, one Keras session each."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import keras_tuner

from tfpipeline.errors import UserError
from tfpipeline.training.fit import seed_everything
from tfpipeline.tuning import distributed, kt_compat
from tfpipeline.tuning.hypermodel import PipelineHyperModel

COMPLETED = "COMPLETED"


@dataclass
class TrialEvent:
    """Passed to hooks: `begin`, `epoch` (with logs) and `end` (with status and metrics)."""

    kind: str
    trial_id: str
    values: dict[str, Any]
    epoch: int | None = None
    status: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


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
        strategy = self.distribution_strategy
        if strategy is not None:
            replicas = strategy.num_replicas_in_sync
            epochs += f" on {replicas} replicas ({type(strategy).__name__})"
        self.log(f"trial {trial.trial_id}{epochs}: {shown}")
        fresh_session()
        config = self.hypermodel.config(values)
        seed_everything(config.data.seed, config.train.deterministic)
        model = None
        try:
            with kt_compat.maybe_distribute(self.distribution_strategy):
                model = self.hypermodel.build(hp)
                if values.get("tuner/trial_id"):
                    model.load_weights(self._get_checkpoint_fname(values["tuner/trial_id"]))
            callbacks = []
            if "tuner/epochs" in values:  # Hyperband continues these weights in later rounds
                path = self._get_checkpoint_fname(trial.trial_id)
                callbacks.append(kt_compat.SaveBestEpoch(objective=objective, filepath=path))

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
        if kt_compat.is_chief_oracle():
            oracle = self.oracle
            done = oracle.max_trials and len(oracle.trials) >= oracle.max_trials
            if done and not kt_compat.retry_queue(oracle):
                self.log("chief: the search is already complete; nothing to serve")
                return
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
