"""Keras metrics logged every epoch, for train and validation.

Binary: accuracy, precision, recall, F1 (at the run's decision threshold), ROC AUC and PR AUC.
Multi-class: accuracy, macro precision / recall / F1, top-k accuracy and one-vs-rest AUC.
The names are fixed (`accuracy`, `precision`, `recall`, `f1`, `auc`, ...) so history columns,
plots and `compare` line up across runs and models.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class _MacroFromConfusion(keras.metrics.Metric):
    """Macro-averaged precision or recall over argmax predictions (Keras has micro only)."""

    def __init__(self, num_classes: int, axis: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.axis = axis  # 0: per predicted class (precision); 1: per true class (recall)
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.argmax(y_true, axis=-1)
        pred = ops.argmax(y_pred, axis=-1)
        index = true * self.num_classes + pred
        counts = ops.bincount(ops.cast(index, "int32"), minlength=self.num_classes**2)
        counts = ops.reshape(ops.cast(counts, self.dtype), (self.num_classes, self.num_classes))
        self.confusion.assign_add(counts)

    def result(self):
        diagonal = ops.diagonal(self.confusion)
        totals = ops.sum(self.confusion, axis=self.axis)
        # Classes never predicted (precision) or absent (recall) count as 0, like sklearn's
        # zero_division=0, and still take part in the average.
        per_class = ops.where(totals > 0, diagonal / ops.maximum(totals, 1.0), 0.0)
        return ops.mean(per_class)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype=self.dtype))

    def get_config(self):
        return {"num_classes": self.num_classes, "axis": self.axis, "name": self.name}


@keras.saving.register_keras_serializable(package="tfpipeline")
class MacroPrecision(_MacroFromConfusion):
    def __init__(self, num_classes: int, name: str = "precision", **kwargs):
        kwargs.pop("axis", None)
        super().__init__(num_classes, axis=0, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="tfpipeline")
class MacroRecall(_MacroFromConfusion):
    def __init__(self, num_classes: int, name: str = "recall", **kwargs):
        kwargs.pop("axis", None)
        super().__init__(num_classes, axis=1, name=name, **kwargs)


def training_metrics(num_classes: int, threshold: float | None = None) -> list[keras.metrics.Metric]:
    """The metric objects to compile a model with.

    Args:
        num_classes: 2 for a sigmoid (binary) head, more for softmax.
        threshold: binary decision threshold for accuracy/precision/recall/F1 (required for two
            classes; see :meth:`tfpipeline.decision.DecisionRule.epoch_threshold`).
    """
    if num_classes == 2:
        if threshold is None:
            raise ValueError("binary training metrics need the epoch decision threshold")
        return [
            keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold),
            keras.metrics.Precision(thresholds=threshold, name="precision"),
            keras.metrics.Recall(thresholds=threshold, name="recall"),
            built_f1(1, average="micro", threshold=threshold, name="f1"),
            keras.metrics.AUC(curve="ROC", num_thresholds=500, name="auc"),
            keras.metrics.AUC(curve="PR", num_thresholds=500, name="pr_auc"),
        ]
    metrics = [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        MacroPrecision(num_classes),
        MacroRecall(num_classes),
        built_f1(num_classes, average="macro", name="f1"),
        keras.metrics.AUC(curve="ROC", num_thresholds=500, name="auc"),
    ]
    metrics += [
        keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}_accuracy") for k in (3, 5) if num_classes > k
    ]
    return metrics


def built_f1(width: int, **options) -> keras.metrics.F1Score:
    """`keras.metrics.F1Score(**options)` for predictions of `width` columns, its state created.

    F1Score creates its variables on its first update, which is inside the train step's first
    trace, and a tf.function whose first trace creates variables is traced twice (see
    :func:`~tfpipeline.training.compile.compile_model`). One update on a zero row, then a reset,
    creates them now; the metric starts from zero as before.
    """
    metric = keras.metrics.F1Score(**options)
    zeros = np.zeros((1, width), np.float32)
    metric.update_state(zeros, zeros)
    metric.reset_state()
    return metric


def monitor_metric(num_classes: int) -> str:
    """What "best epoch" means: validation ROC AUC for binary tasks, accuracy otherwise."""
    return "val_auc" if num_classes == 2 else "val_accuracy"
