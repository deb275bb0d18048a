"""Search spaces: declared once per registered model, narrowed by `--space FILE.yaml`.

A search space is a mapping of hyperparameter names to declarations, in the same syntax as a
`--space` file:

- a list is a choice (`optimizer: [sgd, adam]`, `batchnorm: [true]`; one value fixes it);
- a mapping with `min`/`max` is a range (`lr: {min: 1e-4, max: 1e-1, sampling: log}`, optional
  `step`), integer or float by the field it sets;
- `when: {PARENT: [values]}` makes it conditional (`dropout_rate` only when `dropout` is on);
- a plain value fixes it.

Every name sets one RunConfig field (see `TARGETS`; `filters_<i>` / `dense_<i>` set element i
of `model.filters` / `model.dense_units`), so a trial's values become a RunConfig of the same
dataclasses with `dataclasses.replace` (:func:`apply_values`); the model builders never know
they are being tuned. A `--space` file overrides declarations by name (unknown names are an
error) and with `tune_only: true` tunes only the names it lists; everything else keeps the
base config's value (from flags / `--config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from tfpipeline.errors import UserError

# name -> (section, field); section "augment" is data.augment.
TARGETS: dict[str, tuple[str, str]] = {
    "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"),
    "momentum": ("train", "momentum"),
    "schedule": ("train", "schedule"),
    "label_smoothing": ("train", "label_smoothing"),
    "batch_size": ("data", "batch_size"),
    "batchnorm": ("model", "batchnorm"),
    "dropout": ("model", "dropout"),
    "dropout_rate": ("model", "dropout_rate"),
    "l2": ("model", "l2"),
    "fine_tune_layers": ("model", "fine_tune_layers"),
    **{
        name: ("augment", name)
        for name in ("flip", "rotation", "zoom", "translation", "brightness", "contrast")
    },
}
TUPLE_TARGETS = {"filters": ("model", "filters"), "dense": ("model", "dense_units")}
_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "augment": AugmentConfig}
RESERVED = ("tune_only",)

_COMMON: dict[str, Any] = {
    "lr": {"min": 1e-4, "max": 1e-1, "sampling": "log"},
    "optimizer": ["sgd", "adam"],
    "batch_size": [16, 32, 64],
    "flip": [False, True],
    "rotation": [0.0, 0.05, 0.1],
    "zoom": [0.0, 0.1, 0.2],
}
_DROPOUT: dict[str, Any] = {
    "dropout": [False, True],
    "dropout_rate": {"min": 0.1, "max": 0.5, "step": 0.1, "when": {"dropout": [True]}},
}

# THE search space of each registered model (add an entry when registering a model).
SPACES: dict[str, dict[str, Any]] = {
    "small_cnn": {
        "filters_1": [8, 16, 32],
        "filters_2": [16, 32, 64],
        "filters_3": [32, 64, 128],
        "filters_4": [32, 64, 128],
        "dense_1": [64, 128, 256],
        "dense_2": [32, 64, 128],
        "dense_3": [16, 32, 64],
        "batchnorm": [False, True],
        **_DROPOUT,
        **_COMMON,
    },
    "keras_cnn": {
        "filters_1": [16, 32, 64],
        "filters_2": [16, 32, 64],
        "dense_1": [64, 128, 256],
        "batchnorm": [False, True],
        **_DROPOUT,
        **_COMMON,
    },
    "resnet50_head": {
        "dense_1": [128, 256, 512],
        "dense_2": [32, 64, 128],
        **_DROPOUT,
        "fine_tune_layers": [0, 10, 30],
        **_COMMON,
    },
}
# Names a --space file may add to any model's space (off in the defaults).
EXTRA = ("momentum", "schedule", "label_smoothing", "l2", "translation", "brightness", "contrast")


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
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    return hint


def _coerce(value: Any, kind: type, where: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false", "yes", "no"):
                return str(value).lower() in ("true", "yes")
            raise ValueError
        if kind is int:
            number = float(value)
            if not number.is_integer() or isinstance(value, bool):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected {kind.__name__} value(s), got {value!r}") from None


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
            when = (str(parent), tuple(_coerce(v, parent_kind, f"{where}.when") for v in allowed))
        if "values" in spec:
            spec = spec["values"]
    if isinstance(spec, dict):
        if "min" not in spec or "max" not in spec:
            raise UserError(f"{where}: a range needs both min and max, got {spec!r}")
        if kind not in (int, float):
            raise UserError(f"{where}: a range needs a numeric field; give a list of values instead")
        low, high = _coerce(spec["min"], kind, where), _coerce(spec["max"], kind, where)
        step = _coerce(spec["step"], kind, where) if spec.get("step") is not None else None
        sampling = str(spec.get("sampling", "linear"))
        if sampling not in ("linear", "log", "reverse_log"):
            raise UserError(f"{where}: sampling must be linear, log or reverse_log, got {sampling!r}")
        if not low <= high or (sampling != "linear" and low <= 0) or (step is not None and step <= 0):
            raise UserError(f"{where}: bad range min={low} max={high} step={step} sampling={sampling}")
        return HyperParam(name, kind.__name__, low=low, high=high, step=step, sampling=sampling, when=when)
    values = spec if isinstance(spec, (list, tuple)) else [spec]
    if not values:
        raise UserError(f"{where}: empty list of values")
    typed = tuple(dict.fromkeys(_coerce(v, kind, where) for v in values))
    return HyperParam(name, "choice", values=typed, when=when)


def _known(name: str) -> bool:
    try:
        target(name)
        return True
    except KeyError:
        return False


def allowed_names(model: str) -> list[str]:
    return list(SPACES[model]) + [n for n in EXTRA if n not in SPACES[model]]


def default_space(model: str) -> dict[str, HyperParam]:
    if model not in SPACES:
        raise UserError(f"no search space declared for model '{model}'; known: {', '.join(sorted(SPACES))}")
    return {name: parse_param(name, spec, f"{model} space") for name, spec in SPACES[model].items()}


def load_space(
    model: str, overrides: dict[str, Any] | str | Path | None, base: RunConfig
) -> dict[str, HyperParam]:
    """The model's declared space with `overrides` (a --space file or its parsed mapping) applied.

    Raises:
        UserError: unknown names (listing the allowed ones), malformed declarations, values a
            RunConfig rejects, or a partial filters_i/dense_i group without a base tuple.
    """
    space = default_space(model)
    where = "search space"
    if isinstance(overrides, (str, Path)):
        where = str(overrides)
        overrides = load_yaml(overrides)
    overrides = dict(overrides or {})
    tune_only = _coerce(overrides.pop("tune_only", False), bool, f"{where}: tune_only")
    allowed = allowed_names(model)
    unknown = sorted(name for name in overrides if name not in allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown hyperparameter(s) {', '.join(unknown)} for {model}; "
            f"allowed: {', '.join(allowed)}"
        )
    for name, spec in overrides.items():
        param = parse_param(name, spec, where)
        old = space.get(name)
        if param.when is None and old is not None and old.when is not None:
            param = dataclasses.replace(param, when=old.when)  # keep the declared condition
        space[name] = param
    if tune_only:
        space = {name: p for name, p in space.items() if name in overrides}
    # A condition on a parent that is not tuned is dropped (the parent keeps its base value).
    space = {
        n: (p if not p.when or p.when[0] in space else dataclasses.replace(p, when=None))
        for n, p in space.items()
    }
    ordered = dict(sorted(space.items(), key=lambda item: item[1].when is not None))  # parents first
    _check_groups(ordered, base)
    _check_values(ordered, base)
    return ordered


def _check_groups(space: dict[str, HyperParam], base: RunConfig) -> None:
    for prefix, (section, field) in TUPLE_TARGETS.items():
        indexes = sorted(target(n).index for n in space if n.startswith(prefix + "_"))
        current = getattr(getattr(base, section), field)
        if indexes and indexes != list(range(len(indexes))) and not current:
            names = ", ".join(f"{prefix}_{i + 1}" for i in indexes)
            raise UserError(
                f"search space: {prefix}_i must be numbered 1..N without gaps, or pass "
                f"--{field.replace('_', '-')} for the ones not tuned (got {names})"
            )


def _check_values(space: dict[str, HyperParam], base: RunConfig) -> None:
    """Every extreme value must make a valid RunConfig (e.g. rotation < 1)."""
    for param in space.values():
        extremes = param.values if param.kind == "choice" else (param.low, param.high)
        for value in extremes:
            if target(param.name).index is not None:  # a layer width
                if value < 1:
                    raise UserError(f"search space: {param.name} must be positive, got {value!r}")
                continue
            try:
                apply_values(base, {param.name: value})
            except UserError as exc:
                raise UserError(f"search space: {param.name}={value!r} is not allowed: {exc}") from None


def check_grid(space: dict[str, HyperParam]) -> None:
    """Grid search enumerates values: every range needs a step or a list of values."""
    continuous = [name for name, p in space.items() if not p.discrete]
    if continuous:
        examples = "; ".join(f"{n}: [a, b, ...]" for n in continuous)
        raise UserError(
            f"--tuner grid needs discrete values, but {', '.join(continuous)} "
            f"{'is' if len(continuous) == 1 else 'are'} continuous; give them as lists (or with a step) "
            f"in --space ({examples}), or add `tune_only: true` to tune only what the file lists"
        )


def grid_size(space: dict[str, HyperParam]) -> int:
    total = 1
    for param in space.values():
        if param.kind == "choice":
            total *= len(param.values)
        else:
            total *= int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
    return total


def declare_all(hp, space: dict[str, HyperParam], base: RunConfig) -> None:
    """Declare `space` in keras_tuner `hp`, defaulting each to the base config's value."""
    for param in space.values():
        param.declare(hp, default=base_value(base, param.name))


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
        value = _coerce(value, _field_type(t), name)
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


def describe(space: dict[str, HyperParam]) -> list[str]:
    """One line per hyperparameter, for logs and `search.json`."""
    lines = []
    for name, param in space.items():
        if param.kind == "choice":
            text = ", ".join(str(v) for v in param.values)
            text = f"{{{text}}}" if len(param.values) > 1 else f"= {text}"
        else:
            text = f"[{param.low:g}, {param.high:g}]" + (f" step {param.step:g}" if param.step else "")
            text += f" ({param.sampling})" if param.sampling != "linear" else ""
        if param.when:
            text += f"  when {param.when[0]} in {list(param.when[1])}"
        lines.append(f"{name:16s} {text}")
    return lines
