"""TensorBoard images every epoch: validation ROC curve and confusion matrix.

Keras' TensorBoard callback writes scalars only; no built-in callback renders figures, so this
one predicts the validation split at each epoch end and logs the two figures as images.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.decision import DecisionRule
from tfpipeline.evaluation.plots import figure_to_png_bytes, plot_confusion_matrix, plot_roc
from tfpipeline.evaluation.run_report import class_probabilities


class EpochFigures(keras.callbacks.Callback):
    """Log ROC and confusion-matrix images of the validation split to TensorBoard.

    Args:
        log_dir: TensorBoard folder (images go to its `validation_figures` run).
        dataset: ordered validation dataset.
        labels: class indices matching `dataset`'s order.
        class_names: names for axes and legends.
        rule: the decision rule of the epoch metrics (its threshold as logged while training).
        every: log every this many epochs and at the last one; each costs a prediction pass
            over the validation split and two rendered figures (about 5 % of a CIFAR-10 epoch).
    """

    def __init__(self, log_dir, dataset, labels, class_names, rule: DecisionRule, every: int = 1):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.writer = tf.summary.create_file_writer(str(log_dir) + "/validation_figures")
        self.dataset, self.labels = dataset, np.asarray(labels)
        self.class_names, self.rule = list(class_names), rule

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        raw = self.model.predict(self.dataset, verbose=0)
        probs = class_probabilities(raw, len(self.class_names), self.rule.positive_index)
        y_pred = self.rule.predict(probs)
        figures = {
            "roc": plot_roc(self.labels, probs, self.class_names, self.rule.metric_index),
            "confusion_matrix": plot_confusion_matrix(self.labels, y_pred, self.class_names),
        }
        with self.writer.as_default(step=epoch):
            for name, figure in figures.items():
                image = tf.io.decode_png(figure_to_png_bytes(figure), channels=4)
                tf.summary.image(name, image[None], step=epoch)
        self.writer.flush()
