"""Named, versioned training recipes shipped with tfpipeline (`tfpipeline recipes`).

A recipe is a YAML file in this folder: a `recipe:` block describing it (name, version, one-line
purpose, the result and time we measured, on which CPU) and, beside it, training options in
exactly the schema of `tfpipeline train --config` (flat flag names or `data:`/`model:`/`train:`
sections). `tfpipeline train --recipe NAME` layers them as: defaults <- recipe <- `--config` <-
flags, so any flag still overrides the recipe. The run folder's run.json records the recipe's
name and version; its config.yaml holds the resolved options, so `--config RUN/config.yaml`
reproduces the run without the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from tfpipeline.errors import UserError

META_KEY = "recipe"
_REQUIRED = ("name", "version", "purpose", "expected")


@dataclass(frozen=True)
class Recipe:
    """One shipped recipe.

    Attributes:
        name: what `--recipe` takes.
        version: bumped whenever the options change, so a run folder says which one it used.
        purpose: one line for `tfpipeline recipes`.
        expected: what we measured: `result` (text, e.g. "val accuracy 0.935"), `seconds`
            (training wall time), `machine` (the CPU and precision it was measured on).
        options: the training options (the `--config` schema).
    """

    name: str
    version: int
    purpose: str
    expected: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model the recipe trains (`model: NAME`, or `model: {name: NAME, ...}`)."""
        from tfpipeline.config import ModelConfig

        value = self.options.get("model", ModelConfig().name)
        return str(value.get("name", ModelConfig().name) if isinstance(value, dict) else value)

    def record(self) -> dict[str, Any]:
        """What run.json keeps about the recipe."""
        return {"name": self.name, "version": self.version}


def _parse(text: str, where: str) -> Recipe:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {where}: not valid YAML ({exc})") from None
    meta = values.pop(META_KEY, None)
    if not isinstance(meta, dict) or any(key not in meta for key in _REQUIRED):
        raise UserError(f"recipe {where}: needs a '{META_KEY}:' block with {', '.join(_REQUIRED)}")
    return Recipe(
        name=str(meta["name"]),
        version=int(meta["version"]),
        purpose=str(meta["purpose"]),
        expected=dict(meta["expected"]),
        options=values,
    )


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    found = []
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".yaml"):
            found.append(_parse(entry.read_text(), entry.name))
    return sorted(found, key=lambda recipe: recipe.name)


def load_recipe(name: str) -> Recipe:
    """The recipe called `name`; UserError listing the known ones otherwise."""
    recipes = {recipe.name: recipe for recipe in list_recipes()}
    if name not in recipes:
        raise UserError(f"unknown recipe '{name}'; known recipes: {', '.join(sorted(recipes))}")
    return recipes[name]


def build_config(recipe: str | None = None, **options: Any):
    """A RunConfig from a recipe and options, layered as `tfpipeline train --recipe R --opt v`.

    The library form of the command line, for notebooks and scripts: `options` use the flag
    names with underscores (`lr=0.01`, `image_size=(64, 64)`, `batchnorm=True`, `data="faces"`,
    `model="small_cnn"`) or the sections of a config file (`train={"epochs": 3}`); they override
    the recipe.

    Raises:
        UserError: an unknown recipe or option, or a value a config field refuses.
    """
    from tfpipeline.flags import merge_layers, options_layer

    layers = []
    if recipe is not None:
        chosen = load_recipe(recipe)
        layers.append(options_layer(chosen.options, f"recipe {chosen.name}"))
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    layers.append(options_layer(options, "options"))
    return merge_layers(layers, "options")
