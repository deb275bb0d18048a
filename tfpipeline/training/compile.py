"""Optimiser, learning-rate schedule, loss and metrics for a registered model."""

from __future__ import annotations

import keras

from tfpipeline.config import TrainConfig
from tfpipeline.training.metrics import training_metrics


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """SGD (with momentum), Adam or AdamW; cosine decay over the whole run when asked."""
    lr = config.lr
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total_steps))
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=1e-4)


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
        steps_per_epoch: batches per epoch (sets the cosine schedule's length).
        threshold: binary decision threshold for accuracy/precision/recall/F1 while training
            (the epoch rule's; None for multi-class models).
    """
    model.compile(
        optimizer=make_optimizer(config, config.epochs * steps_per_epoch),
        loss=make_loss(num_classes, config.label_smoothing),
        metrics=training_metrics(num_classes, threshold),
        steps_per_execution=config.steps_per_execution,
        jit_compile=False,  # measured slower for these CNNs on CPU (see benchmarks/README.md)
    )
    return model
