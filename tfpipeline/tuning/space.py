"""Search spaces: declared once per registered model, narrowed by `--space FILE.yaml`.

A search space is a mapping of hyperparameter names to declarations, in the same syntax as a
`--space` file:

- a list is a choice (`optimizer: [sgd, adam]`, `batchnorm: [true]`; one value fixes it);
- a mapping with `min`/`max` is a range (`lr: {min: 1e-4, max: 1e-1, sampling: log}`, optional
  `step`), integer or float by the field it sets;
- `when: {PARENT: [values]}` makes it conditional (`dropout_rate` only when `dropout` is on);
- a plain value fixes it.

Each registered model declares its space in its registry entry (`ModelSpec.search_space`). Every
name sets one RunConfig field (see `hparams.TARGETS`; `filters_<i>` / `dense_<i>` set element i
of `model.filters` / `model.dense_units`), so a trial's values become a RunConfig of the same
dataclasses with `dataclasses.replace` (:func:`apply_values`); the model builders never know
they are being tuned. A `--space` file overrides declarations by name (unknown names are an
error) and with `tune_only: true` tunes only the names it lists; everything else keeps the
base config's value (from flags / `--config`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from tfpipeline.config import RunConfig
from tfpipeline.config_io import coerce_scalar, load_yaml
from tfpipeline.errors import UserError
from tfpipeline.tuning.hparams import (
    TUPLE_TARGETS,
    HyperParam,
    apply_values,
    base_value,
    parse_param,
    target,
)

RESERVED = ("tune_only",)

# Names a --space file may add to any model's space (off in the defaults).
EXTRA = (
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup",
    "ema",
    "label_smoothing",
    "l2",
    "translation",
    "shift",
    "brightness",
    "contrast",
)


def declared_space(model: str) -> dict[str, Any]:
    """The model's own search space, as its registry entry declares it."""
    from tfpipeline.models import MODELS, get_spec

    declared = get_spec(model).search_space
    if not declared:
        tunable = sorted(name for name, spec in MODELS.items() if spec.search_space)
        raise UserError(f"model '{model}' declares no search space; tunable models: {', '.join(tunable)}")
    return declared


def allowed_names(model: str) -> list[str]:
    declared = declared_space(model)
    return list(declared) + [n for n in EXTRA if n not in declared]


def default_space(model: str) -> dict[str, HyperParam]:
    return {name: parse_param(name, spec, f"{model} space") for name, spec in declared_space(model).items()}


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
    tune_only = coerce_scalar(overrides.pop("tune_only", False), bool, f"{where}: tune_only")
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
