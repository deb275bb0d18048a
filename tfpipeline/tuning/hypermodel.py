"""The KerasTuner HyperModel: a trial's values -> RunConfig -> the registered model.

`PipelineHyperModel.build(hp)` turns `hp.values` into a RunConfig (`space.apply_values`, i.e.
`dataclasses.replace` on the base config) and builds/compiles it with the training stage's own
`build_compiled_model`; `fit` trains it with `fit_model`. There is no model code here.

Data is loaded and checked once per search (:class:`TrialData`): the decoded train/val images
are cached once, and each trial only rebuilds the cheap batching part (shuffle, batch size,
augmentation, scaling) on top of that shared cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from tfpipeline.config import RunConfig
from tfpipeline.data.pipeline import build_dataset, cached_stream, pixel_array
from tfpipeline.data.split import Split
from tfpipeline.training.fit import Prepared, build_compiled_model, fit_model, prepare
from tfpipeline.tuning import space as space_module

HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


class TrialData:
    """Loads and checks the data once; hands each trial datasets for its batch size/augmentation."""

    def __init__(self, base: RunConfig):
        self.base = base
        self.prepared = prepare(base)  # seeds, validates the model/image size, checks files once
        classes = self.prepared.num_classes
        self.label_mode = "binary" if classes == 2 else "categorical"
        self._decoded: dict[str, Split] | None = None

    @property
    def num_classes(self) -> int:
        return self.prepared.num_classes

    def _splits(self) -> dict[str, Split]:
        """Decoded, resized uint8 images of train/val behind ONE cache shared by all trials."""
        if self._decoded is None:
            config = self.base.data
            self._decoded = {}
            for name in ("train", "val"):
                split = self.prepared.bundle.splits[name]
                pixels = pixel_array(split, config)
                if pixels is not None:  # every trial gathers its batches from these
                    self._decoded[name] = Split(labels=split.labels, images=pixels)
                    continue
                dataset = cached_stream(split, config, f"tune-{name}")
                self._decoded[name] = Split(labels=split.labels, dataset=dataset)
        return self._decoded

    def for_config(self, config: RunConfig, *, datasets: bool = True) -> Prepared:
        """`Prepared` for one trial: same data facts, datasets batched/augmented per `config`.

        With `datasets=False` only the facts (steps per epoch for this batch size) change.
        """
        steps = math.ceil(len(self.prepared.bundle.splits["train"]) / config.data.batch_size)
        if not datasets:
            return dataclasses.replace(self.prepared, steps_per_epoch=steps)
        splits = self._splits()
        data = dataclasses.replace(config.data, cache="none")  # the shared cache sits below
        common = {
            "scaling": self.prepared.scaling,
            "num_classes": self.num_classes,
            "label_mode": self.label_mode,
        }
        classes = self.prepared.bundle.info.class_names
        train = build_dataset(
            splits["train"], data, training=True, cache_name="train", class_names=classes, **common
        )
        # Known cardinality: Keras then restarts the iterator every epoch of `steps_per_epoch`.
        train = train.apply(tf.data.experimental.assert_cardinality(steps))
        val = build_dataset(splits["val"], data, training=False, cache_name="val", **common)
        bundle = dataclasses.replace(self.prepared.bundle, train=train, val=val, test=None)
        return dataclasses.replace(self.prepared, bundle=bundle, steps_per_epoch=steps)


class _EpochReporter(keras.callbacks.Callback):
    """Forwards epoch ends to `report(epoch, logs)` (progress lines and test hooks)."""

    def __init__(self, report: Callable[[int, dict], None]):
        super().__init__()
        self.report = report

    def on_epoch_end(self, epoch, logs=None):
        self.report(epoch, dict(logs or {}))


def best_epoch_metrics(
    history: dict[str, list], objective: keras_tuner.Objective, first_epoch: int = 0
) -> dict:
    """Validation metrics of the best epoch by `objective`, plus `best_epoch` (1-based)."""
    values = np.asarray(history[objective.name], dtype=float)
    if not len(values) or np.all(np.isnan(values)):
        return {objective.name: float("nan")}
    index = int(np.nanargmin(values) if objective.direction == "min" else np.nanargmax(values))
    metrics = {k: float(v[index]) for k, v in history.items() if k.startswith("val_") and len(v) > index}
    metrics[objective.name] = float(values[index])
    metrics["best_epoch"] = float(first_epoch + index + 1)
    return metrics


class PipelineHyperModel(keras_tuner.HyperModel):
    """Builds and fits tfpipeline models from hyperparameters.

    Args:
        base: the base RunConfig (flags / --config); every field not in `space` keeps its value.
        space: name -> HyperParam (see :mod:`tfpipeline.tuning.space`).
        data: the search's TrialData (None on a distributed chief, which never trains).
    """

    def __init__(self, base: RunConfig, space: dict, data: TrialData | None):
        super().__init__(name=base.model.name)
        self.base = base
        self.space = space
        self.data = data

    def declare_hyperparameters(self, hp) -> None:
        space_module.declare_all(hp, self.space, self.base)

    def config(self, values: dict[str, Any]) -> RunConfig:
        """The RunConfig of a trial (Hyperband's `tuner/epochs` sets the epoch total)."""
        config = space_module.apply_values(self.base, values)
        if values.get("tuner/epochs"):
            config = dataclasses.replace(
                config, train=dataclasses.replace(config.train, epochs=int(values["tuner/epochs"]))
            )
        return config

    def build(self, hp) -> keras.Model:
        config = self.config(hp.values)
        return build_compiled_model(config, self.data.for_config(config, datasets=False))

    def fit(
        self,
        hp,
        model: keras.Model,
        *args,
        objective: keras_tuner.Objective,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        on_epoch: Callable[[int, dict], None] | None = None,
        **kwargs,
    ) -> dict[str, float]:
        """Train `model` for the trial; return the best epoch's val metrics, epochs run, seconds."""
        config = self.config(hp.values)
        initial_epoch = int(hp.values.get("tuner/initial_epoch", 0) or 0)
        extra = [_EpochReporter(on_epoch)] if on_epoch else []
        start = time.perf_counter()
        history = fit_model(
            model,
            config,
            self.data.for_config(config),
            [*callbacks, *extra],
            initial_epoch=initial_epoch,
            verbose=0,
        )
        metrics = best_epoch_metrics(history.history, objective, initial_epoch)
        metrics["epochs_run"] = float(len(history.history.get(objective.name, [])))
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        return metrics
