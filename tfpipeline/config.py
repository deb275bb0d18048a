"""Typed, frozen configuration for every stage, and its (de)serialisation.

One dataclass per stage. Configs are built from CLI flags, from a YAML file (`--config`), or
from a tuner's hyperparameters; all three paths go through :func:`from_dict`, which rejects
unknown keys so a typo never silently falls back to a default. The resolved config of a run is
written to its run folder with :func:`to_dict` and reads back into an identical object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfpipeline.decision import check_policy
from tfpipeline.errors import UserError

RESIZE_METHODS = ("stretch", "crop", "pad")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3")
COLOR_MODES = ("rgb", "grayscale")
SCALINGS = ("model", "unit", "symmetric", "raw")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training batches only, after the cache.

    Every transform is off by default (a zero strength); strengths follow the matching Keras
    preprocessing layers: `rotation` is a fraction of a full turn, `zoom` and `translation` a
    fraction of the image side, `brightness` and `contrast` a relative factor.
    """

    flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "translation", "brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"augmentation '{name}' must be in [0, 1), got {value}")

    @property
    def enabled(self) -> bool:
        return self.flip or any(
            getattr(self, n) > 0 for n in ("rotation", "zoom", "translation", "brightness", "contrast")
        )


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they become batches.

    Attributes:
        data: a folder, `tfds:NAME[:VERSION]`, or an embedded dataset name (`faces`, `digits`).
        split_ratios: train/val/test fractions used when a folder has no split subfolders.
        seed: seeds splitting, shuffling and augmentation.
        classes: explicit class order; alphabetical folder order when empty.
        positive_class: for binary tasks, the class precision/recall refer to (default: second).
        image_size: (height, width) fed to the model.
        color_mode: `rgb` or `grayscale`.
        resize: `stretch` (ignore aspect), `crop` (centre crop to aspect) or `pad` (letterbox).
        scaling: pixel range fed to the model; `model` uses the model's own preference.
        cache: `memory`, `none`, or a file path prefix for an on-disk tf.data cache.
        tfds_download: allow TFDS to download and prepare data (needs internet).
        skip_bad: drop files that fail the data check instead of refusing to start.
    """

    data: str = "faces"
    split_ratios: tuple[float, float, float] = (0.75, 0.125, 0.125)
    seed: int = 101
    classes: tuple[str, ...] = ()
    positive_class: str | None = None
    tfds_data_dir: str | None = None
    tfds_download: bool = False
    image_size: tuple[int, int] = (224, 224)
    color_mode: str = "rgb"
    resize: str = "stretch"
    interpolation: str = "bilinear"
    scaling: str = "model"
    cache: str = "memory"
    batch_size: int = 32
    skip_bad: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _choice("color_mode", self.color_mode, COLOR_MODES)
        _choice("resize", self.resize, RESIZE_METHODS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("scaling", self.scaling, SCALINGS)
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios):
            raise UserError(f"--split-ratios needs three non-negative numbers, got {self.split_ratios}")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or self.split_ratios[0] <= 0 or self.split_ratios[1] <= 0:
            raise UserError(
                f"--split-ratios must sum to 1 with positive train and val parts, got {self.split_ratios}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise UserError(f"--image-size must be a positive size, got {self.image_size}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if len(set(self.classes)) != len(self.classes):
            raise UserError(f"--classes lists a class twice: {','.join(self.classes)}")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--{option.replace('_', '-')} must be one of {', '.join(allowed)}; got '{value}'")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture choices; each registered builder reads the fields that apply to it.

    Attributes:
        name: registry key (`tfpipeline models` lists them).
        batchnorm / dropout / dropout_rate: small_cnn's regularisation switches.
        filters / dense_units: convolution widths and dense head widths (empty: the model's own).
        weights: `imagenet`, `none`, or a path to a `.h5` / `.weights.h5` file (pretrained models).
        fine_tune_layers: how many of the backbone's last layers to unfreeze (BatchNorm stays frozen).
        l2: L2 weight-decay factor on conv and dense kernels.
        padding: `valid` (the assessment's network) or `same` (allows small images).
    """

    name: str = "small_cnn"
    batchnorm: bool = False
    dropout: bool = False
    dropout_rate: float = 0.2
    filters: tuple[int, ...] = ()
    dense_units: tuple[int, ...] = ()
    weights: str = "imagenet"
    fine_tune_layers: int = 0
    l2: float = 0.0
    padding: str = "valid"

    def __post_init__(self) -> None:
        _choice("padding", self.padding, ("valid", "same"))
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"--dropout-rate must be in [0, 1), got {self.dropout_rate}")
        if self.l2 < 0:
            raise UserError(f"--l2 must be non-negative, got {self.l2}")
        if self.fine_tune_layers < 0:
            raise UserError(f"--fine-tune-layers must be non-negative, got {self.fine_tune_layers}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run bookkeeping. Defaults reproduce the assessment (SGD 1e-3, m=0.9)."""

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    schedule: str = "none"
    early_stopping: int = 0
    class_weight: str = "none"
    label_smoothing: float = 0.0
    threshold: str = "0.5"
    deterministic: bool = False
    run_dir: str = "runs"
    steps_per_execution: int = 1

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        _choice("schedule", self.schedule, ("none", "cosine", "plateau"))
        _choice("class_weight", self.class_weight, ("none", "balanced"))
        check_policy(self.threshold)
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; this is what `--config FILE.yaml` and run folders hold."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, strict about unknown keys and types


def from_dict(cls: type, values: dict[str, Any] | None, *, where: str = "config") -> Any:
    """Build dataclass `cls` from a plain dict (e.g. parsed YAML), rejecting unknown keys.

    Nested dataclass fields take nested dicts; tuples take lists. Values are converted to the
    annotated type so YAML's `1e-3` (a string to PyYAML) or `[224, 224]` land as the right type.

    Raises:
        UserError: naming `where` and the offending key when a key is unknown or a value has
            the wrong type.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(item_type, v, where) for v in value)
    if hint in (bool, int, float, str):
        return coerce_scalar(value, hint, where)
    return value


def coerce_scalar(value: Any, kind: type, where: str) -> Any:
    """`value` as a bool, int, float or str, the one conversion every config path uses.

    Booleans accept true/false, yes/no and 1/0 (any case); numbers refuse booleans; an int
    accepts integral floats (`1e3`) but not `2.5`.

    Raises:
        UserError: naming `where` and the value.
    """
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "yes", "1", "false", "no", "0"):
                raise ValueError
            return text in ("true", "yes", "1")
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists) suitable for YAML/JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    return loaded


def write_yaml(path: str | Path, values: dict[str, Any]) -> None:
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))
