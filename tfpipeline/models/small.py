"""Small convolutional networks trained from scratch (Sequential API): the assessment's
`small_cnn` and the Keras book's `keras_cnn`."""

from __future__ import annotations

import keras
from keras import layers

from tfpipeline.config import ModelConfig
from tfpipeline.models.common import (
    COMMON_SEARCH,
    DROPOUT_SEARCH,
    InputShape,
    check_inputs,
    choose,
    dense_stack,
    l2_regularizer,
    min_conv_pool_side,
    output_layer,
    widths,
)
from tfpipeline.models.stems import NeighbourResidual, SRMFilters

SMALL_CNN_SEARCH = {
    "filters_1": [8, 16, 32],
    "filters_2": [16, 32, 64],
    "filters_3": [32, 64, 128],
    "filters_4": [32, 64, 128],
    "dense_1": [64, 128, 256],
    "dense_2": [32, 64, 128],
    "dense_3": [16, 32, 64],
    "batchnorm": [False, True],
    **DROPOUT_SEARCH,
    **COMMON_SEARCH,
}
KERAS_CNN_SEARCH = {
    "filters_1": [16, 32, 64],
    "filters_2": [16, 32, 64],
    "dense_1": [64, 128, 256],
    "batchnorm": [False, True],
    **DROPOUT_SEARCH,
    **COMMON_SEARCH,
}


def _conv_net(name, config, input_shape, num_classes, filters, units, bn_stages, dropout_after_last):
    """Shared body of the Sequential CNNs: validate sizes, conv stages, dense head, output.

    Each stage is conv{i} (3x3, ReLU) -> pool{i} (2x2) [-> bn{i} on the pooled output, for the
    first `bn_stages` stages when `config.batchnorm`], matching the reference network.
    """
    same_side = min_conv_pool_side(len(filters), "same")
    hint = f"; use --padding same (works down to {same_side}x{same_side}) or a larger --image-size"
    min_side = min_conv_pool_side(len(filters), config.padding)
    shape = check_inputs(name, input_shape, min_side, hint if config.padding == "valid" else "")
    stem = choose(name, "stem", config.stem, ("plain", "srm", "residual"), "plain")
    stack: list = [keras.Input(shape=shape, name="image")]
    if stem == "srm":
        stack.append(SRMFilters(name="srm"))
    elif stem == "residual":
        stack.append(NeighbourResidual(name="neighbour_residual"))
    reg = {"kernel_regularizer": l2_regularizer(config.l2)}
    for i, width in enumerate(filters, start=1):
        # ReLU fused into the conv: same maths, and Grad-CAM then sees the activations.
        conv = layers.Conv2D(width, 3, padding=config.padding, activation="relu", name=f"conv{i}", **reg)
        stack += [conv, layers.MaxPooling2D(2, name=f"pool{i}")]
        if config.batchnorm and i <= bn_stages:
            stack.append(layers.BatchNormalization(name=f"bn{i}"))
    stack.append(layers.Flatten(name="flatten"))
    stack += dense_stack(config, units, dropout_after_last)
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
    filters = widths("small_cnn", "filters", config.filters, (16, 32, 64, 64), exact=True)
    units = widths("small_cnn", "dense-units", config.dense_units, (128, 64, 32), exact=True)
    return _conv_net("small_cnn", config, input_shape, num_classes, filters, units, 2, False)


def build_keras_cnn(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """The Keras book's small convnet: 2 x (Conv2D(32, 3, relu) + MaxPool) -> Dense(128) -> output.

    `padding` and `l2` apply as in small_cnn; `batchnorm` adds batch norm after each pool;
    `dropout` adds a Dropout after the Dense(128) layer. `filters` (2 widths) and
    `dense_units` (1 width) override the defaults.
    """
    filters = widths("keras_cnn", "filters", config.filters, (32, 32), exact=True)
    units = widths("keras_cnn", "dense-units", config.dense_units, (128,), exact=True)
    return _conv_net("keras_cnn", config, input_shape, num_classes, filters, units, len(filters), True)


def regularisation_label(config: ModelConfig) -> str:
    """`vanilla`, `bn`, `dp` or `bn+dp`: how the assessment named its four configurations."""
    parts = [name for name, on in (("bn", config.batchnorm), ("dp", config.dropout)) if on]
    return "+".join(parts) or "vanilla"
