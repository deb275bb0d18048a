"""Optimiser, learning-rate schedule, loss and metrics for a registered model."""

from __future__ import annotations

import keras

from tfpipeline.config import TrainConfig
from tfpipeline.training.metrics import training_metrics
from tfpipeline.training.optimizers import FastSGD, OneCycle, WarmupCosine

ADAMW_DEFAULT_DECAY = 1e-4


def learning_rate(config: TrainConfig, total_steps: int):
    """The learning rate: a number, or a schedule over the run's `total_steps`."""
    if config.schedule == "cosine":
        return WarmupCosine(config.lr, total_steps, warmup=config.warmup or 0.0)
    if config.schedule == "onecycle":
        return OneCycle(config.lr, total_steps, warmup=config.warmup if config.warmup is not None else 0.23)
    return config.lr


def norm_offsets(model: keras.Model) -> tuple[str, ...]:
    """Paths of the model's BatchNormalization offsets (beta), nested models included."""
    return tuple(
        layer.beta.path
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.center and layer.trainable
    )


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def make_optimizer(config: TrainConfig, total_steps: int, model: keras.Model | None = None):
    """SGD (momentum, Nesterov, BatchNorm-offset lr scale, lookahead), Adam or AdamW with the
    run's schedule, decoupled weight decay and optional weight averaging (`ema`).

    Args:
        config: the training options.
        total_steps: optimiser steps in the whole run (sets the schedules' length).
        model: the model being trained (needed for `norm_lr_scale`, to find its BatchNorm offsets).
    """
    lr = learning_rate(config, total_steps)
    common = {"use_ema": config.ema > 0, "ema_momentum": config.ema or 0.99}
    decay = config.weight_decay
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=lr, weight_decay=ADAMW_DEFAULT_DECAY if decay is None else decay, **common
        )
    if decay:
        common["weight_decay"] = decay
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, **common)
    sgd = {"learning_rate": lr, "momentum": config.momentum, "nesterov": config.nesterov, **common}
    if config.norm_lr_scale != 1.0 or config.lookahead:
        scaled = norm_offsets(model) if model is not None and config.norm_lr_scale != 1.0 else ()
        return FastSGD(
            scaled_paths=scaled,
            scale=config.norm_lr_scale,
            lookahead=config.lookahead,
            total_steps=total_steps,
            **sgd,
        )
    return keras.optimizers.SGD(**sgd)


def make_loss(num_classes: int, label_smoothing: float) -> keras.losses.Loss:
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def compile_model(
    model: keras.Model,
    config: TrainConfig,
    num_classes: int,
    *,
    steps_per_epoch: int,
    threshold: float | None = None,
) -> keras.Model:
    """Compile `model` in place for training and return it.

    Args:
        steps_per_epoch: batches per epoch (sets the schedules' length).
        threshold: binary decision threshold for accuracy/precision/recall/F1 while training
            (the epoch rule's; None for multi-class models).
    """
    model.compile(
        optimizer=make_optimizer(config, config.epochs * steps_per_epoch, model),
        loss=make_loss(num_classes, config.label_smoothing),
        metrics=training_metrics(num_classes, threshold),
        steps_per_execution=config.steps_per_execution,
        jit_compile=False,  # measured slower for these CNNs on CPU (see benchmarks/README.md)
    )
    if model.built:
        # Without a distribution strategy, Keras 3 creates the optimizer's slots (momentum, EMA)
        # in the first train step, inside its tf.function, and TensorFlow traces a function
        # whose first trace creates variables a second time: 1.2-1.4 s of every run, fold and
        # trial on 2 cores. Created here, the step is traced once.
        model.optimizer.build(model.trainable_variables)
    return model
