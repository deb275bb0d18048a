"""Config (de)serialisation: plain dicts and YAML <-> frozen dataclasses, strict about keys.

:func:`from_dict` is the one way in for flags, `--config FILE.yaml`, recipes and tuner
hyperparameters: unknown keys are errors (a typo never falls back to a default silently) and
values are converted to the annotated type. :func:`to_dict` is the way out, into run folders.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tfpipeline.errors import UserError


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
