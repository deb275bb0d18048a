"""Hyperparameter declarations and the RunConfig field each one sets.

`parse_param` reads one declaration (the syntax of tfpipeline/tuning/space.py and of `--space`
files) into a typed :class:`HyperParam`; `apply_values` turns a trial's values into a RunConfig
of the same dataclasses with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from tfpipeline.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.config_io import coerce_scalar
from tfpipeline.errors import UserError

# name -> (section, field); section "augment" is data.augment.
TARGETS: dict[str, tuple[str, str]] = {
    "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"),
    "momentum": ("train", "momentum"),
    "nesterov": ("train", "nesterov"),
    "weight_decay": ("train", "weight_decay"),
    "schedule": ("train", "schedule"),
    "warmup": ("train", "warmup"),
    "norm_lr_scale": ("train", "norm_lr_scale"),
    "lookahead": ("train", "lookahead"),
    "ema": ("train", "ema"),
    "label_smoothing": ("train", "label_smoothing"),
    "batch_size": ("data", "batch_size"),
    "batchnorm": ("model", "batchnorm"),
    "dropout": ("model", "dropout"),
    "dropout_rate": ("model", "dropout_rate"),
    "l2": ("model", "l2"),
    "activation": ("model", "activation"),
    "bn_momentum": ("model", "bn_momentum"),
    "head_scale": ("model", "head_scale"),
    "fine_tune_layers": ("model", "fine_tune_layers"),
    **{
        name: ("augment", name)
        for name in ("flip", "rotation", "zoom", "translation", "brightness", "contrast", "shift")
    },
}
TUPLE_TARGETS = {"filters": ("model", "filters"), "dense": ("model", "dense_units")}
_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "augment": AugmentConfig}


@dataclass(frozen=True)
class HyperParam:
    """One declared hyperparameter: a choice (`values`) or a range (`low`..`high`)."""

    name: str
    kind: str  # "choice" | "int" | "float"
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    sampling: str = "linear"
    when: tuple[str, tuple] | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == "choice" or self.step is not None

    def declaration(self) -> Any:
        """The plain (YAML) form this was parsed from; round-trips through :func:`parse_param`."""
        if self.kind == "choice":
            out: Any = list(self.values)
        else:
            out = {"min": self.low, "max": self.high}
            if self.step is not None:
                out["step"] = self.step
            if self.sampling != "linear":
                out["sampling"] = self.sampling
        if self.when:
            out = {"values": out} if isinstance(out, list) else out
            out["when"] = {self.when[0]: list(self.when[1])}
        return out

    def declare(self, hp, default: Any = None) -> None:
        """Register this in a keras_tuner `HyperParameters` (`default` used when allowed)."""
        condition = {"parent_name": self.when[0], "parent_values": list(self.when[1])} if self.when else {}
        if self.kind == "choice":
            values = list(self.values)
            if len(values) == 1:
                hp.Fixed(self.name, values[0], **condition)
            elif all(isinstance(v, bool) for v in values):
                hp.Boolean(self.name, default=bool(default) if default in values else values[0], **condition)
            else:
                hp.Choice(self.name, values, default=default if default in values else None, **condition)
            return
        inside = default is not None and self.low <= default <= self.high and self.step is None
        make = hp.Int if self.kind == "int" else hp.Float
        make(
            self.name,
            self.low,
            self.high,
            step=self.step,
            sampling=self.sampling,
            default=default if inside else None,
            **condition,
        )


@dataclass(frozen=True)
class Target:
    section: str
    field: str
    index: int | None = None


def target(name: str) -> Target:
    if name in TARGETS:
        return Target(*TARGETS[name])
    match = re.fullmatch(r"(filters|dense)_([1-9][0-9]?)", name)
    if match:
        return Target(*TUPLE_TARGETS[match.group(1)], int(match.group(2)) - 1)
    raise KeyError(name)


def _field_type(t: Target) -> type:
    hint = typing.get_type_hints(_SECTION_TYPES[t.section])[t.field]
    if typing.get_origin(hint) in (tuple, types.UnionType, typing.Union):  # tuple[int, ...], float | None
        return next(a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis)
    return hint


def parse_param(name: str, spec: Any, where: str = "search space") -> HyperParam:
    """One declaration (list, range mapping, or plain value) -> HyperParam, values typed."""
    where = f"{where}: {name}"
    kind = _field_type(target(name))
    when = None
    if isinstance(spec, dict):
        spec = dict(spec)
        unknown = sorted(set(spec) - {"values", "min", "max", "step", "sampling", "when"})
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)} (use values, min, max, step, sampling, when)"
            )
        if "when" in spec:
            condition = spec.pop("when")
            if not isinstance(condition, dict) or len(condition) != 1:
                raise UserError(f"{where}: 'when' takes one PARENT: [values] pair, got {condition!r}")
            ((parent, allowed),) = condition.items()
            allowed = allowed if isinstance(allowed, list) else [allowed]
            parent_kind = _field_type(target(str(parent))) if _known(str(parent)) else str
            when = (str(parent), tuple(coerce_scalar(v, parent_kind, f"{where}.when") for v in allowed))
        if "values" in spec:
            spec = spec["values"]
    if isinstance(spec, dict):
        if "min" not in spec or "max" not in spec:
            raise UserError(f"{where}: a range needs both min and max, got {spec!r}")
        if kind not in (int, float):
            raise UserError(f"{where}: a range needs a numeric field; give a list of values instead")
        low, high = coerce_scalar(spec["min"], kind, where), coerce_scalar(spec["max"], kind, where)
        step = coerce_scalar(spec["step"], kind, where) if spec.get("step") is not None else None
        sampling = str(spec.get("sampling", "linear"))
        if sampling not in ("linear", "log", "reverse_log"):
            raise UserError(f"{where}: sampling must be linear, log or reverse_log, got {sampling!r}")
        if not low <= high or (sampling != "linear" and low <= 0) or (step is not None and step <= 0):
            raise UserError(f"{where}: bad range min={low} max={high} step={step} sampling={sampling}")
        return HyperParam(name, kind.__name__, low=low, high=high, step=step, sampling=sampling, when=when)
    values = spec if isinstance(spec, (list, tuple)) else [spec]
    if not values:
        raise UserError(f"{where}: empty list of values")
    typed = tuple(dict.fromkeys(coerce_scalar(v, kind, where) for v in values))
    return HyperParam(name, "choice", values=typed, when=when)


def _known(name: str) -> bool:
    try:
        target(name)
        return True
    except KeyError:
        return False


def base_value(base: RunConfig, name: str) -> Any:
    t = target(name)
    section = base.data.augment if t.section == "augment" else getattr(base, t.section)
    value = getattr(section, t.field)
    if t.index is None:
        return value
    return value[t.index] if t.index < len(value) else None


def apply_values(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A trial's values -> RunConfig via dataclasses.replace (KerasTuner's `tuner/*` skipped)."""
    changes: dict[str, dict[str, Any]] = {s: {} for s in _SECTION_TYPES}
    elements: dict[tuple[str, str], dict[int, Any]] = {}
    for name, value in values.items():
        if name.startswith("tuner/") or value is None:
            continue
        t = target(name)
        value = coerce_scalar(value, _field_type(t), name)
        if t.index is None:
            changes[t.section][t.field] = value
        else:
            elements.setdefault((t.section, t.field), {})[t.index] = value
    for (section, field), items in elements.items():
        current = list(getattr(getattr(base, section), field))
        size = max(len(current), max(items) + 1)
        if not current and sorted(items) != list(range(size)):
            raise UserError(f"{field}: tuned elements {sorted(i + 1 for i in items)} need a base --{field}")
        merged = [items.get(i, current[i] if i < len(current) else None) for i in range(size)]
        changes[section][field] = tuple(merged)
    augment = dataclasses.replace(base.data.augment, **changes["augment"])
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, augment=augment, **changes["data"]),
        model=dataclasses.replace(base.model, **changes["model"]),
        train=dataclasses.replace(base.train, **changes["train"]),
    )
