"""Pieces every model builder shares: input checks, widths, the dense head and the output layer.

The classification head is decided from the class count alone: two classes get one sigmoid
unit (binary cross-entropy), more classes a softmax over all of them. It computes in float32 so
probabilities stay exact under a mixed-precision policy.
"""

from __future__ import annotations

import keras
from keras import layers

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError

InputShape = tuple[int, int, int]


def output_units(num_classes: int) -> tuple[int, str]:
    """(units, activation) of the classification layer; UserError for fewer than two classes."""
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def output_layer(num_classes: int, l2: float = 0.0) -> layers.Dense:
    """The classification layer, named "output": 1 sigmoid unit for 2 classes, else softmax."""
    units, activation = output_units(num_classes)
    return layers.Dense(
        units, activation=activation, kernel_regularizer=l2_regularizer(l2), dtype="float32", name="output"
    )


def min_conv_pool_side(stages: int, padding: str) -> int:
    """Smallest image side surviving `stages` of 3x3 conv (given padding) + 2x2 max-pool.

    A stage maps side s to (s - 2) // 2 with `valid` padding and s // 2 with `same`; working
    backwards from a 1-pixel output gives the minimum input (4 valid stages: 46, 4 same: 16).
    """
    side = 1
    for _ in range(stages):
        side = 2 * side + (2 if padding == "valid" else 0)
    return side


def l2_regularizer(factor: float) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(factor) if factor > 0 else None


def check_inputs(model: str, input_shape: InputShape, min_side: int, hint: str = "") -> InputShape:
    """Validate (height, width, channels): 1 or 3 channels and both sides >= `min_side`.

    Sides may be None (any size) for models that pool globally, e.g. when training on crops.
    """
    if len(input_shape) != 3:
        raise UserError(f"{model}: input shape must be (height, width, channels), got {input_shape}")
    height, width, channels = (None if v is None else int(v) for v in input_shape)
    if channels not in (1, 3):
        raise UserError(f"{model}: images must have 1 (grayscale) or 3 (rgb) channels, got {channels}")
    if height is not None and width is not None and min(height, width) < min_side:
        raise UserError(f"{model} needs images of at least {min_side}x{min_side}, got {height}x{width}{hint}")
    return height, width, channels


def widths(model: str, option: str, values: tuple[int, ...], default: tuple[int, ...], exact: bool):
    """`values` if given (checked: positive, and the default's length when `exact`), else default."""
    if not values:
        return default
    if exact and len(values) != len(default):
        raise UserError(f"{model}: --{option} needs {len(default)} values, got {len(values)}: {values}")
    if any(v < 1 for v in values):
        raise UserError(f"{model}: --{option} values must be positive, got {values}")
    return tuple(values)


def choose(model: str, option: str, value: str, allowed: tuple[str, ...], default: str) -> str:
    """A model option whose config value may be `auto` (the model's own default)."""
    if value == "auto":
        return default
    if value not in allowed:
        raise UserError(f"{model} does not support --{option} {value}; it supports: {', '.join(allowed)}")
    return value


def dense_stack(config: ModelConfig, units: tuple[int, ...], dropout_after_last: bool) -> list:
    """dense{i} (ReLU) layers, each followed by dropout{i} when `config.dropout` is set.

    The assessment's network has no dropout after its last hidden layer; `dropout_after_last`
    adds it there for heads with a single hidden layer, where it would otherwise never apply.
    """
    stack: list[layers.Layer] = []
    for i, width in enumerate(units, start=1):
        stack.append(
            layers.Dense(
                width, activation="relu", kernel_regularizer=l2_regularizer(config.l2), name=f"dense{i}"
            )
        )
        if config.dropout and (i < len(units) or dropout_after_last):
            stack.append(layers.Dropout(config.dropout_rate, name=f"dropout{i}"))
    return stack


# Search-space declarations shared by several models (syntax: tfpipeline.tuning.space). Every
# registered model's own space is built from these plus its architecture's choices.
COMMON_SEARCH: dict = {
    "lr": {"min": 1e-4, "max": 1e-1, "sampling": "log"},
    "optimizer": ["sgd", "adam"],
    "batch_size": [16, 32, 64],
    "flip": [False, True],
    "rotation": [0.0, 0.05, 0.1],
    "zoom": [0.0, 0.1, 0.2],
}
DROPOUT_SEARCH: dict = {
    "dropout": [False, True],
    "dropout_rate": {"min": 0.1, "max": 0.5, "step": 0.1, "when": {"dropout": [True]}},
}
