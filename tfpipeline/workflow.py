"""Library entry points that chain the stages: what `tfpipeline train` does, as one call.

`run_training(config)` trains a model into a run folder (the training stage), then predicts
the validation and test splits with the best checkpoint (through the run's test-time
augmentation), resolves the run's decision rule on validation, and writes metrics.json and the
standard plots (the evaluation stage). Last, it fits the run's out-of-domain detector
(`--ood`, default mahalanobis) on the training split and calibrates its threshold on
validation (the ood stage, `RUN/ood/`). The CLI, the tuner's `--train-best` and the notebooks
all call it, so every run folder made by any of them is complete.

This module sits after training, ood and evaluation in the stage order and imports them;
nothing upstream imports it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import pandas as pd

from tfpipeline.config import RunConfig
from tfpipeline.data import DataBundle
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.training import RunFolder, train
from tfpipeline.training.fit import Prepared

if TYPE_CHECKING:
    from tfpipeline.ood.store import Detector

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """A finished run: its folder, model, data and final metrics.

    Attributes:
        run: the run folder (config.yaml, run.json, history.csv, checkpoints, metrics.json, plots).
        config: the resolved configuration it was trained with.
        model: the best checkpoint, loaded.
        bundle: the data it was trained and evaluated on.
        history: per-epoch metrics (history.csv).
        metrics: metrics.json: `threshold`, `val`, `test` (when there is a test split), `best_epoch`.
        rule: the resolved decision rule (binary threshold, or argmax).
        train_seconds: wall-clock seconds spent in `fit`.
        stopped_early: early stopping ended the run before `epochs`.
        ood: the fitted out-of-domain detector (None with `--ood none`, or when it could not be
            fitted: the reason is logged and the run stays usable without one).
    """

    run: RunFolder
    config: RunConfig
    model: keras.Model
    bundle: DataBundle
    history: pd.DataFrame
    metrics: dict[str, Any]
    rule: DecisionRule
    train_seconds: float
    stopped_early: bool
    ood: Detector | None = None


def _figures_callback(
    bundle: DataBundle, run: RunFolder, prepared: Prepared, *, every: int
) -> keras.callbacks.Callback:
    from tfpipeline.evaluation.callbacks import EpochFigures

    return EpochFigures(
        run.tensorboard_dir,
        bundle.val,
        bundle.splits["val"].labels,
        bundle.info.class_names,
        prepared.epoch_rule,
        every=every,
    )


class _SynthesizedFakes(keras.callbacks.Callback):
    """Writes plots/synthesized_fakes.png when training starts (runs with --synth-fakes)."""

    def __init__(self, bundle: DataBundle, run: RunFolder, config: RunConfig, scaling: str):
        super().__init__()
        self.bundle, self.run, self.config, self.scaling = bundle, run, config, scaling

    def on_train_begin(self, logs=None):
        from tfpipeline.evaluation.figures import synthesized_fakes_figure

        synthesized_fakes_figure(
            self.bundle.splits["train"],
            self.config.data,
            list(self.bundle.info.class_names),
            self.scaling,
            self.run.plots_dir / "synthesized_fakes.png",
        )


def run_training(
    config: RunConfig,
    *,
    run: RunFolder | None = None,
    resume: bool = False,
    extra_callbacks: Sequence[Callable[..., keras.callbacks.Callback]] = (),
    verbose: str | int = "auto",
    recipe: dict | None = None,
) -> RunResult:
    """Train `config` into a run folder and write its final metrics and plots.

    Args:
        config: the resolved run configuration.
        run: an existing run folder to continue (with `resume=True`); a new one otherwise.
        resume: continue from the run's BackupAndRestore state.
        extra_callbacks: more callback factories `(bundle, run, prepared) -> Callback`.
        verbose: Keras verbosity; "auto" is a progress bar on a terminal and one line per epoch
            otherwise (see :func:`tfpipeline.training.fit.fit_verbosity`).
        recipe: `{"name", "version"}` of the recipe the config came from, recorded in run.json.

    Returns:
        The finished run with metrics.json's content.

    Raises:
        UserError: for data, model or option problems, before any training starts.
    """
    from tfpipeline.evaluation.run_report import predict_split, write_run_report
    from tfpipeline.models.tta import with_tta

    factories = list(extra_callbacks)
    if config.train.epoch_figures > 0:
        factories.insert(0, functools.partial(_figures_callback, every=config.train.epoch_figures))
    if config.data.augment.synth_fakes > 0 and not resume:
        factories.append(
            lambda bundle, run, prepared: _SynthesizedFakes(bundle, run, config, prepared.scaling)
        )
    result = train(
        config,
        run=run,
        resume=resume,
        extra_callbacks=factories,
        verbose=verbose,
        facts={"recipe": recipe} if recipe else None,
    )
    config = result.config  # as trained and recorded (a local data folder made absolute)
    info = result.bundle.info
    model = with_tta(result.model, config.train.tta)
    predictions = {
        split: predict_split(
            model, dataset, result.bundle.splits[split].labels, info.num_classes, info.positive_index
        )
        for split, dataset in (("val", result.bundle.val), ("test", result.bundle.test))
        if dataset is not None
    }
    metrics = write_run_report(
        result.run,
        result.history,
        predictions,
        info,
        config.train.threshold,
        planned_epochs=config.train.epochs,
        paths={
            split: result.bundle.splits[split].paths
            for split in predictions
            if result.bundle.splits[split].from_files
        },
        fake_class=config.data.augment.fake_class,
    )
    detector = _fit_ood(result, config)
    return RunResult(
        run=result.run,
        config=config,
        model=result.model,
        bundle=result.bundle,
        history=result.history,
        metrics=metrics,
        rule=DecisionRule.from_json(metrics["threshold"], info.class_names),
        train_seconds=result.train_seconds,
        stopped_early=result.stopped_early,
        ood=detector,
    )


def _fit_ood(result, config: RunConfig) -> Detector | None:
    """Fit and save the run's `--ood` detector; a data problem leaves the run without one."""
    from tfpipeline.models import main_model
    from tfpipeline.ood.fit import fit_run_detector

    try:
        return fit_run_detector(
            result.run.path, main_model(result.model), config, result.scaling, bundle=result.bundle
        )
    except UserError as exc:
        log.warning(
            "no out-of-domain detector (%s); fit one later with `tfpipeline ood fit %s`", exc, result.run.path
        )
        return None
