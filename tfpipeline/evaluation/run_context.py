"""What evaluate, compare, predict and export need to know about a finished run folder.

A :class:`RunContext` gathers the run's config, run.json facts, class names, decision rule
(:class:`~tfpipeline.decision.DecisionRule`) and pixel scaling, so every consumer reads them the
same way.
:class:`ServingSpec` is the subset that decides how images are preprocessed and predictions
decided; `predict` and the export both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.config import RunConfig
from tfpipeline.decision import DecisionRule
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
        rule: the run's resolved decision rule (metrics.json's threshold).
        scaling: pixel range the model was trained on (`unit`, `symmetric`, `raw`).
    """

    run: RunFolder
    config: RunConfig
    info: dict[str, Any]
    metrics: dict[str, Any]
    class_names: tuple[str, ...]
    rule: DecisionRule
    scaling: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def positive_index(self) -> int | None:
        return self.rule.positive_index


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
    return RunContext(
        run=run,
        config=config,
        info=info,
        metrics=metrics,
        class_names=class_names,
        rule=run_rule(run.path, config, info, metrics, class_names, classes.get("positive_class")),
        scaling=info.get("scaling") or resolve_scaling(config),
    )


def run_rule(
    where: Path,
    config: RunConfig,
    info: dict,
    metrics: dict,
    class_names: tuple[str, ...],
    positive_class: str | None,
) -> DecisionRule:
    """The decision rule the run reported (metrics.json `threshold`).

    Without metrics.json (an unfinished run) a numeric or `prior` policy can still be
    reproduced; a policy resolved on validation predictions (`tuned`, `recall:`, `fpr:`) cannot.
    """
    stored = metrics.get("threshold")
    if stored and (stored.get("value") is not None or len(class_names) != 2):
        return DecisionRule.from_json(stored, class_names)
    rule = DecisionRule.for_classes(config.train.threshold, class_names, positive_class)
    if rule.policy == "prior":
        return rule.resolve(train_prior=(info.get("data") or {}).get("train_prior"))
    if not rule.resolved:
        raise UserError(
            f"{where}: no metrics.json, so the run's {rule.policy} threshold is unknown "
            "(did training finish?)"
        )
    return rule


def load_run_model(context: RunContext):
    """The run's best checkpoint (last when there is no best), uncompiled, computing in float32
    whatever precision it was trained in (:mod:`tfpipeline.models.precision`); without TTA: wrap
    it with :func:`tfpipeline.models.tta.with_tta` to predict as the run does."""
    import keras

    import tfpipeline.models  # noqa: F401  (registers ResNet50Preprocess for deserialisation)
    import tfpipeline.training.metrics  # noqa: F401  (registers the macro metrics)
    from tfpipeline.models import main_model
    from tfpipeline.models.precision import as_float32

    path = context.run.model_checkpoint()
    try:
        return as_float32(main_model(keras.models.load_model(path, compile=False)))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load the checkpoint ({exc})") from exc


@dataclass(frozen=True)
class ServingSpec:
    """Everything the signatures need to know about a run, as plain values.

    Attributes:
        class_names: output order of the model (K names).
        rule: the resolved decision rule (threshold on the positive-class probability, or argmax).
        image_size: (height, width) the model takes.
        channels: 1 or 3.
        resize / interpolation: the run's resize method and interpolation.
        scaling: `unit`, `symmetric` or `raw` (run.json's resolved pixel range).
        tta: test-time augmentation applied to every prediction (`none` or `flip`).
    """

    class_names: tuple[str, ...]
    rule: DecisionRule
    image_size: tuple[int, int]
    channels: int
    resize: str
    interpolation: str
    scaling: str
    tta: str = "none"

    @property
    def binary(self) -> bool:
        return self.rule.binary

    @property
    def positive_index(self) -> int | None:
        return self.rule.positive_index

    @property
    def threshold(self) -> float | None:
        return self.rule.value

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @classmethod
    def from_context(cls, context: RunContext, tta: str | None = None) -> ServingSpec:
        """The serving facts of an opened run (`tta`: override the run's own)."""
        data = context.config.data
        return cls(
            class_names=tuple(context.class_names),
            rule=context.rule,
            image_size=(int(data.image_size[0]), int(data.image_size[1])),
            channels=int(data.channels),
            resize=data.resize,
            interpolation=data.interpolation,
            scaling=context.scaling,
            tta=tta or context.config.train.tta,
        )
