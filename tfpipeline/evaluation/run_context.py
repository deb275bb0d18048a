"""What evaluate, compare, predict and export need to know about a finished run folder.

A :class:`RunContext` gathers the run's config, run.json facts, class names, positive class,
decision threshold and pixel scaling, so every consumer reads them the same way.
:class:`ServingSpec` is the subset that decides how images are preprocessed and predictions
decided; `predict` and the export both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.config import RunConfig
from tfpipeline.errors import UserError
from tfpipeline.training.run_folder import RunFolder


@dataclass(frozen=True)
class RunContext:
    """A run folder's config and recorded facts.

    Attributes:
        run: the folder.
        config: its resolved RunConfig (config.yaml).
        info: run.json (status, scaling, input_shape, data summary, parameter counts, ...).
        metrics: metrics.json ({} when training did not finish).
        class_names: class order the model outputs (classes.json).
        positive_index: index of the class the sigmoid scores (binary), else None.
        threshold: binary decision threshold (metrics.json's), else None.
        scaling: pixel range the model was trained on (`unit`, `symmetric`, `raw`).
    """

    run: RunFolder
    config: RunConfig
    info: dict[str, Any]
    metrics: dict[str, Any]
    class_names: tuple[str, ...]
    positive_index: int | None
    threshold: float | None
    scaling: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def metric_index(self) -> int:
        """`positive_index` for the metric functions (which want an int even for multi-class)."""
        return self.positive_index if self.positive_index is not None else 1


def open_run(path: str | Path) -> RunContext:
    """Read a run folder's config, run.json, classes.json and metrics.json.

    Raises:
        UserError: `path` is not a run folder, or lacks the files a finished run has.
    """
    from tfpipeline.training.fit import resolve_scaling

    run = RunFolder.open(path)
    config = run.read_config()
    info = run.read_json("run.json")
    metrics = run.read_json("metrics.json") if run.metrics_file.is_file() else {}
    classes = run.read_json("classes.json")
    class_names = tuple(str(c) for c in classes["class_names"])
    positive = classes.get("positive_class")
    positive_index = class_names.index(positive) if positive is not None and len(class_names) == 2 else None
    return RunContext(
        run=run,
        config=config,
        info=info,
        metrics=metrics,
        class_names=class_names,
        positive_index=positive_index,
        threshold=run_threshold(run.path, config, info, metrics, positive_index),
        scaling=info.get("scaling") or resolve_scaling(config),
    )


def run_threshold(where: Path, config: RunConfig, info: dict, metrics: dict, positive_index) -> float | None:
    """The binary decision threshold the run reported (metrics.json `threshold.value`).

    Without metrics.json (an unfinished run) a numeric or `prior` policy can still be
    reproduced; a `tuned` one cannot.
    """
    if positive_index is None:
        return None
    value = (metrics.get("threshold") or {}).get("value")
    if value is not None:
        return float(value)
    policy = config.train.threshold
    if policy == "prior":
        prior = (info.get("data") or {}).get("train_prior")
        return float(prior) if prior is not None else 0.5
    if policy == "tuned":
        raise UserError(
            f"{where}: no metrics.json, so the run's tuned threshold is unknown (did training finish?)"
        )
    return float(policy)


def load_run_model(context: RunContext):
    """The run's best checkpoint (last when there is no best), uncompiled."""
    import keras

    import tfpipeline.models  # noqa: F401  (registers ResNet50Preprocess for deserialisation)
    import tfpipeline.training.metrics  # noqa: F401  (registers the macro metrics)

    path = context.run.model_checkpoint()
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load the checkpoint ({exc})") from exc


@dataclass(frozen=True)
class ServingSpec:
    """Everything the signatures need to know about a run, as plain values.

    Attributes:
        class_names: output order of the model (K names).
        positive_index: index of the class a binary model's sigmoid scores; None for K > 2.
        threshold: binary decision threshold on the positive-class probability; None for K > 2.
        image_size: (height, width) the model takes.
        channels: 1 or 3.
        resize / interpolation: the run's resize method and interpolation.
        scaling: `unit`, `symmetric` or `raw` (run.json's resolved pixel range).
    """

    class_names: tuple[str, ...]
    positive_index: int | None
    threshold: float | None
    image_size: tuple[int, int]
    channels: int
    resize: str
    interpolation: str
    scaling: str

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @classmethod
    def from_context(cls, context: RunContext) -> ServingSpec:
        """The serving facts of an opened run."""
        data = context.config.data
        binary = len(context.class_names) == 2
        positive = context.positive_index if binary else None
        if binary and positive is None:
            positive = 1
        threshold = context.threshold if binary else None
        return cls(
            class_names=tuple(context.class_names),
            positive_index=positive,
            threshold=float(threshold if threshold is not None else 0.5) if binary else None,
            image_size=(int(data.image_size[0]), int(data.image_size[1])),
            channels=int(data.channels),
            resize=data.resize,
            interpolation=data.interpolation,
            scaling=context.scaling,
        )
