"""Registry of model builders, keyed by the name used on the command line (`--model NAME`).

Every builder is a pure function `(config, input_shape, num_classes) -> keras.Model` that returns
an UNCOMPILED model: the training stage owns the optimiser, loss and metrics. The classification
head is decided from `num_classes` alone: two classes get one sigmoid unit (binary
cross-entropy), more classes get a softmax over `num_classes` units.

Each :class:`ModelSpec` also tells the data pipeline which pixel range the model expects
(`input_scaling`) and the smallest image side it accepts, so a bad combination fails with a
:class:`UserError` before any data is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError

InputShape = tuple[int, int, int]
RESNET50_MIN_SIDE = 32  # keras.applications refuses smaller inputs without the top


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what it needs from the data pipeline.

    Attributes:
        build: `(config, input_shape, num_classes) -> keras.Model`, uncompiled.
        description: one line, shown by `tfpipeline models`.
        input_scaling: `unit` (pixels in [0, 1]) or `raw` ([0, 255] floats; the model
            normalises internally).
        min_image_size: smallest image side the model accepts under its most permissive
            options (e.g. small_cnn needs more with `--padding valid`; its builder says so).
    """

    build: Callable[[ModelConfig, InputShape, int], keras.Model]
    description: str
    input_scaling: str
    min_image_size: int


# ---------------------------------------------------------------------------------------------
# Shared pieces


def output_layer(num_classes: int, l2: float = 0.0) -> layers.Dense:
    """The classification layer, named "output": 1 sigmoid unit for 2 classes, else softmax.

    The layer computes in float32 so probabilities stay exact under a mixed-precision policy.

    Raises:
        UserError: for fewer than two classes (nothing to classify).
    """
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    return layers.Dense(
        units, activation=activation, kernel_regularizer=_l2(l2), dtype="float32", name="output"
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


def _l2(factor: float) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(factor) if factor > 0 else None


def _check_inputs(model: str, input_shape: InputShape, min_side: int, hint: str = "") -> InputShape:
    """Validate (height, width, channels): 1 or 3 channels and both sides >= `min_side`."""
    if len(input_shape) != 3:
        raise UserError(f"{model}: input shape must be (height, width, channels), got {input_shape}")
    height, width, channels = (int(v) for v in input_shape)
    if channels not in (1, 3):
        raise UserError(f"{model}: images must have 1 (grayscale) or 3 (rgb) channels, got {channels}")
    if min(height, width) < min_side:
        raise UserError(f"{model} needs images of at least {min_side}x{min_side}, got {height}x{width}{hint}")
    return height, width, channels


def _widths(model: str, option: str, values: tuple[int, ...], default: tuple[int, ...], exact: bool):
    """`values` if given (checked: positive, and the default's length when `exact`), else default."""
    if not values:
        return default
    if exact and len(values) != len(default):
        raise UserError(f"{model}: --{option} needs {len(default)} values, got {len(values)}: {values}")
    if any(v < 1 for v in values):
        raise UserError(f"{model}: --{option} values must be positive, got {values}")
    return tuple(values)


def _dense_stack(config: ModelConfig, units: tuple[int, ...], dropout_after_last: bool) -> list:
    """dense{i} (ReLU) layers, each followed by dropout{i} when `config.dropout` is set.

    The assessment's network has no dropout after its last hidden layer; `dropout_after_last`
    adds it there for heads with a single hidden layer, where it would otherwise never apply.
    """
    stack: list[layers.Layer] = []
    for i, width in enumerate(units, start=1):
        stack.append(
            layers.Dense(width, activation="relu", kernel_regularizer=_l2(config.l2), name=f"dense{i}")
        )
        if config.dropout and (i < len(units) or dropout_after_last):
            stack.append(layers.Dropout(config.dropout_rate, name=f"dropout{i}"))
    return stack


# ---------------------------------------------------------------------------------------------
# Convolutional networks trained from scratch (Sequential API)


def _conv_net(name, config, input_shape, num_classes, filters, units, bn_stages, dropout_after_last):
    """Shared body of the Sequential CNNs: validate sizes, conv stages, dense head, output.

    Each stage is conv{i} (3x3, ReLU) -> pool{i} (2x2) [-> bn{i} on the pooled output, for the
    first `bn_stages` stages when `config.batchnorm`], matching the reference network.
    """
    same_side = min_conv_pool_side(len(filters), "same")
    hint = f"; use --padding same (works down to {same_side}x{same_side}) or a larger --image-size"
    min_side = min_conv_pool_side(len(filters), config.padding)
    shape = _check_inputs(name, input_shape, min_side, hint if config.padding == "valid" else "")
    stack: list = [keras.Input(shape=shape, name="image")]
    reg = {"kernel_regularizer": _l2(config.l2)}
    for i, width in enumerate(filters, start=1):
        # ReLU fused into the conv: same maths, and Grad-CAM then sees the activations.
        conv = layers.Conv2D(width, 3, padding=config.padding, activation="relu", name=f"conv{i}", **reg)
        stack += [conv, layers.MaxPooling2D(2, name=f"pool{i}")]
        if config.batchnorm and i <= bn_stages:
            stack.append(layers.BatchNormalization(name=f"bn{i}"))
    stack.append(layers.Flatten(name="flatten"))
    stack += _dense_stack(config, units, dropout_after_last)
    stack.append(output_layer(num_classes, config.l2))
    return keras.Sequential(stack, name=name)


def build_small_cnn(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """The assessment's PyTorch network, layer for layer, as a Keras Sequential model.

    Four conv(3x3)+ReLU+maxpool(2) stages of 16/32/64/64 filters, batch norm after the first
    two pools when `config.batchnorm`, then Dense 128/64/32 ReLU (dropout after the first two
    when `config.dropout`) and the output layer. At 224x224x3 with two classes it has exactly
    1,250,657 trainable parameters (1,250,753 with batch norm, plus 96 non-trainable).

    Args:
        config: `filters` (4 widths) and `dense_units` (3 widths) override the defaults;
            `padding`, `batchnorm`, `dropout`, `dropout_rate` and `l2` apply.
        input_shape: (height, width, channels) with 1 or 3 channels.
        num_classes: 2 for a sigmoid head, more for softmax.

    Returns:
        The uncompiled model, expecting pixels in [0, 1].
    """
    filters = _widths("small_cnn", "filters", config.filters, (16, 32, 64, 64), exact=True)
    units = _widths("small_cnn", "dense-units", config.dense_units, (128, 64, 32), exact=True)
    return _conv_net("small_cnn", config, input_shape, num_classes, filters, units, 2, False)


def build_keras_cnn(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """The Keras book's small convnet: 2 x (Conv2D(32, 3, relu) + MaxPool) -> Dense(128) -> output.

    `padding` and `l2` apply as in small_cnn; `batchnorm` adds batch norm after each pool;
    `dropout` adds a Dropout after the Dense(128) layer. `filters` (2 widths) and
    `dense_units` (1 width) override the defaults.
    """
    filters = _widths("keras_cnn", "filters", config.filters, (32, 32), exact=True)
    units = _widths("keras_cnn", "dense-units", config.dense_units, (128,), exact=True)
    return _conv_net("keras_cnn", config, input_shape, num_classes, filters, units, len(filters), True)


# ---------------------------------------------------------------------------------------------
# Transfer learning on a frozen ResNet50 (functional API)


@keras.saving.register_keras_serializable(package="tfpipeline")
class ResNet50Preprocess(layers.Layer):
    """Raw [0, 255] pixels -> ResNet50 input: grayscale tiled to RGB, then `preprocess_input`.

    Keeping the normalisation inside the model means the saved `.keras` file carries it (no
    train/serve skew), and a registered layer reloads without `custom_objects` or the
    safe-mode restrictions that a Lambda layer would hit.
    """

    def call(self, inputs):
        if inputs.shape[-1] == 1:  # ImageNet weights need 3 channels; grey is R = G = B
            inputs = keras.ops.repeat(inputs, 3, axis=-1)
        return keras.applications.resnet50.preprocess_input(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def _resnet50_backbone(weights: str, shape: InputShape) -> keras.Model:
    """ResNet50 without its top, initialised from `imagenet`, `none` or a local weights file."""
    choice = weights.lower()
    if choice == "imagenet":
        try:
            return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:
            # Offline, keras' get_file turns URLError/HTTPError into a bare Exception("URL fetch
            # failure ..."); a bad cached file gives OSError or a hash-check ValueError.
            text = str(exc)
            if not (isinstance(exc, OSError) or "URL fetch failure" in text or "corrupted" in text):
                raise
            raise UserError(
                f"could not download the ImageNet weights for resnet50_head ({text}); without internet "
                "use --weights none (random initialisation) or --weights PATH to a local "
                ".h5 / .weights.h5 file"
            ) from exc
    path = Path(weights).expanduser()
    if choice != "none":  # check the file before the (slow) backbone build
        if not path.is_file():
            raise UserError(f"--weights: file not found: {path} (use imagenet, none, or a .h5 file path)")
        if path.suffix not in (".h5", ".hdf5"):
            raise UserError(f"--weights: {path} is not a .h5 / .weights.h5 weights file")
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
    if choice != "none":
        try:
            backbone.load_weights(str(path))
        except (ValueError, OSError, KeyError) as exc:
            raise UserError(f"--weights: could not load {path} into the ResNet50 backbone: {exc}") from exc
    return backbone


def _set_fine_tuning(backbone: keras.Model, fine_tune_layers: int) -> None:
    """Freeze the backbone except its last `fine_tune_layers` layers; BatchNorm always frozen.

    Layers are counted over `backbone.layers` (activations, adds and the input count too), the
    usual Keras recipe; a count beyond the depth unfreezes everything. Frozen BatchNorm keeps
    its ImageNet statistics, which small fine-tuning batches would otherwise wreck.
    """
    backbone.trainable = fine_tune_layers > 0
    if fine_tune_layers == 0:
        return
    cutoff = max(len(backbone.layers) - fine_tune_layers, 0)
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= cutoff and not isinstance(layer, layers.BatchNormalization)


def build_resnet50_head(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """Frozen ResNet50 backbone + global average pooling + Dense 512/128/32 ReLU + output.

    The model takes raw [0, 255] pixels: grayscale is tiled to 3 channels, then ResNet50's own
    preprocessing runs inside the model. The backbone is called with `training=False` so its
    batch norm stays in inference mode even when layers are unfrozen for fine-tuning.

    Args:
        config: `weights` (`imagenet`, `none` or a `.h5` path), `fine_tune_layers`,
            `dense_units` (any number of widths), `dropout`, `dropout_rate` and `l2` apply;
            `filters`, `padding` and `batchnorm` do not.
        input_shape: (height, width, channels), sides >= 32, 1 or 3 channels.
        num_classes: 2 for a sigmoid head, more for softmax.

    Raises:
        UserError: ImageNet weights unavailable (offline), or a weights file missing/unloadable.
    """
    height, width, channels = _check_inputs("resnet50_head", input_shape, RESNET50_MIN_SIDE)
    units = _widths("resnet50_head", "dense-units", config.dense_units, (512, 128, 32), exact=False)
    head = output_layer(num_classes, config.l2)  # fail on a bad class count before the slow part
    backbone = _resnet50_backbone(config.weights, (height, width, 3))
    _set_fine_tuning(backbone, config.fine_tune_layers)

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = ResNet50Preprocess(name="resnet50_preprocess")(inputs)
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for layer in _dense_stack(config, units, dropout_after_last=False):
        x = layer(x)
    return keras.Model(inputs, head(x), name="resnet50_head")


# ---------------------------------------------------------------------------------------------
# Registry and helpers used by the CLI and Grad-CAM

MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(
        build_small_cnn,
        "the assessment's 4-stage CNN (16/32/64/64 filters, Dense 128/64/32), trained from scratch",
        input_scaling="unit",
        min_image_size=min_conv_pool_side(4, "same"),
    ),
    "resnet50_head": ModelSpec(
        build_resnet50_head,
        "frozen ResNet50 (imagenet/none/file weights) + Dense 512/128/32 head; optional fine-tuning",
        input_scaling="raw",
        min_image_size=RESNET50_MIN_SIDE,
    ),
    "keras_cnn": ModelSpec(
        build_keras_cnn,
        "the Keras book's small convnet: 2 x (Conv 32 + MaxPool), Dense 128",
        input_scaling="unit",
        min_image_size=min_conv_pool_side(2, "same"),
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The registered spec for `name`; UserError listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}") from None


def build_model(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """Build the uncompiled model registered as `config.name` for this input shape and class count."""
    return get_spec(config.name).build(config, tuple(input_shape), num_classes)


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts of a built model."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    non_trainable = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return trainable, non_trainable


def model_summary(config: ModelConfig, input_shape: InputShape, num_classes: int) -> str:
    """Text for `tfpipeline models show NAME`: what the model expects, its layers, its size."""
    spec = get_spec(config.name)
    model = build_model(config, input_shape, num_classes)
    captured: list[str] = []
    model.summary(print_fn=lambda text, **_: captured.append(text))
    trainable, non_trainable = parameter_counts(model)
    head = "1 sigmoid unit" if num_classes == 2 else f"{num_classes}-way softmax"
    shape = "x".join(str(v) for v in input_shape)
    header = f"{config.name}: {spec.description}\ninput {shape}, pixels '{spec.input_scaling}', "
    header += f"{num_classes} classes ({head})\n"
    counts = f"\ntrainable parameters: {trainable:,}\nnon-trainable parameters: {non_trainable:,}"
    return header + "".join(captured).rstrip() + counts
