"""Registry of model builders, keyed by the name used on the command line (`--model NAME`).

Every builder is a pure function `(config, input_shape, num_classes) -> keras.Model` that returns
an UNCOMPILED model: the training stage owns the optimiser, loss and metrics. The head is
decided from `num_classes` alone (:mod:`~tfpipeline.models.common`).

A :class:`ModelSpec` holds everything else the other stages need to know about a model, so no
stage hard-codes a model name: the pixel range and smallest image it accepts (checked before
any data is loaded), its hyperparameter search space (the tuner), whether a configuration
starts from pretrained weights (summaries), a short run label (`compare`), the layer Grad-CAM
explains, the layer whose output is the model's embedding (out-of-domain detection), and an
optional initialisation from training images (fast_resnet's whitening stem).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError
from tfpipeline.models.aux import AuxRegionModel, main_model
from tfpipeline.models.common import InputShape, min_conv_pool_side, output_layer
from tfpipeline.models.fast_resnet import (
    FAST_RESNET_SEARCH,
    PartialIdentity,
    build_fast_resnet,
    init_whitening,
)
from tfpipeline.models.fast_resnet import (
    MIN_SIDE as FAST_RESNET_MIN_SIDE,
)
from tfpipeline.models.resnet import (
    RESNET50_HEAD_SEARCH,
    RESNET50_MIN_SIDE,
    ResNet50Preprocess,
    build_resnet50_head,
    is_pretrained,
)
from tfpipeline.models.small import (
    KERAS_CNN_SEARCH,
    SMALL_CNN_SEARCH,
    build_keras_cnn,
    build_small_cnn,
    regularisation_label,
)

__all__ = [
    "MODELS",
    "AuxRegionModel",
    "main_model",
    "InputShape",
    "ModelSpec",
    "PartialIdentity",
    "ResNet50Preprocess",
    "build_model",
    "get_spec",
    "min_conv_pool_side",
    "model_summary",
    "output_layer",
    "parameter_counts",
]


def _never(config: ModelConfig) -> bool:
    return False


def _layer(name: str) -> Callable[[ModelConfig], str]:
    """An `embedding_layer` that is always the layer called `name`."""
    return lambda config: name


def _fast_resnet_taps(config: ModelConfig) -> tuple[str, ...]:
    """The stem's and each of the three groups' final activation (the block outputs); with region
    crops their maps hold the four crops of each image, which the detector pools together."""
    return ("stem_act", "group1_act2", "group2_act2", "group3_act2")


def _fast_resnet_embedding(config: ModelConfig) -> str:
    """Global max-pool features (the head is linear on them); with region crops, the four
    regions' pooled features side by side."""
    return "region_features" if config.region_crops else "pool"


def _last_dense(config: ModelConfig, default: int = 3) -> str:
    """The last hidden Dense layer (`dense{i}`) of a head of `config.dense_units` (or `default`) widths."""
    return f"dense{len(config.dense_units) or default}"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model and the facts other stages need about it.

    Attributes:
        build: `(config, input_shape, num_classes) -> keras.Model`, uncompiled.
        description: one line, shown by `tfpipeline models`.
        input_scaling: `unit` (pixels in [0, 1]) or `raw` ([0, 255] floats; the model
            normalises internally).
        min_image_size: smallest image side the model accepts under its most permissive
            options (e.g. small_cnn needs more with `--padding valid`; its builder says so).
        search_space: hyperparameter declarations for `tfpipeline tune` (syntax:
            :mod:`tfpipeline.tuning.space`).
        pretrained: whether a configuration starts from pretrained weights.
        can_be_pretrained: the model accepts pretrained weights at all (summaries suggest it).
        label: a short name for a configuration in comparisons (default: the model name).
        gradcam_layer: path of layer names Grad-CAM explains; empty: the last convolution.
        data_init: `(model, images) -> None`, initialising weights from a sample of training
            images (float32, already scaled as the model expects) before the first epoch.
        any_size: the model accepts images of any size (it pools globally), so it can train on
            crops (`--crop`) and be evaluated on whole images.
        aux_head: the model can learn the face regions CIPLAB names edit (`--aux-regions`, `--region-crops`).
        embedding_layer: `config -> layer name` whose output is the model's penultimate
            embedding, the features out-of-domain detection models (:mod:`tfpipeline.ood`).
        ood_taps: `config -> layer names` of feature maps whose channel means the detector
            also models (low-level statistics an embedding trained to be invariant discards,
            e.g. how sharp an image is); None: the model's 2-D pooling layers.
    """

    build: Callable[[ModelConfig, InputShape, int], keras.Model]
    description: str
    input_scaling: str
    min_image_size: int
    search_space: dict[str, Any] = field(default_factory=dict)
    pretrained: Callable[[ModelConfig], bool] = _never
    can_be_pretrained: bool = False
    label: Callable[[ModelConfig], str] | None = None
    gradcam_layer: tuple[str, ...] = ()
    data_init: Callable[[keras.Model, np.ndarray], None] | None = None
    any_size: bool = False
    aux_head: bool = False
    embedding_layer: Callable[[ModelConfig], str] = _last_dense
    ood_taps: Callable[[ModelConfig], tuple[str, ...]] | None = None

    def run_label(self, config: ModelConfig) -> str:
        return self.label(config) if self.label else config.name

    def embedding(self, config: ModelConfig) -> str:
        """Name of the layer whose output is the embedding of a model built from `config`."""
        return self.embedding_layer(config)


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(
        build_small_cnn,
        "the assessment's 4-stage CNN (16/32/64/64 filters, Dense 128/64/32), trained from scratch",
        input_scaling="unit",
        min_image_size=min_conv_pool_side(4, "same"),
        search_space=SMALL_CNN_SEARCH,
        label=regularisation_label,
        embedding_layer=_layer("dense3"),
    ),
    "resnet50_head": ModelSpec(
        build_resnet50_head,
        "frozen ResNet50 (imagenet/none/file weights) + Dense 512/128/32 head; optional fine-tuning",
        input_scaling="raw",
        min_image_size=RESNET50_MIN_SIDE,
        search_space=RESNET50_HEAD_SEARCH,
        pretrained=is_pretrained,
        can_be_pretrained=True,
        embedding_layer=_last_dense,
    ),
    "fast_resnet": ModelSpec(
        build_fast_resnet,
        "fast small-image network: data-whitened stem, 3 BatchNorm conv groups (64/256/256), scaled "
        "linear head (the CIFAR-10 recipe's model)",
        input_scaling="unit",
        min_image_size=FAST_RESNET_MIN_SIDE,
        search_space=FAST_RESNET_SEARCH,
        data_init=init_whitening,
        any_size=True,
        aux_head=True,
        embedding_layer=_fast_resnet_embedding,
        ood_taps=_fast_resnet_taps,
    ),
    "keras_cnn": ModelSpec(
        build_keras_cnn,
        "the Keras book's small convnet: 2 x (Conv 32 + MaxPool), Dense 128",
        input_scaling="unit",
        min_image_size=min_conv_pool_side(2, "same"),
        search_space=KERAS_CNN_SEARCH,
        embedding_layer=_layer("dense1"),
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
