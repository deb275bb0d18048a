"""An auxiliary region head trained beside the classifier (`--aux-regions WEIGHT`).

CIPLAB's file names say which of left eye / right eye / nose / mouth a fake edited, and the
self-blend generator knows which region it forged. A 4-unit sigmoid head on the classifier's
features learns to name the edited regions; its loss, added with a small weight, pushes the
shared features towards local evidence. Images whose regions are unknown (a fake without the
naming pattern) carry -1 targets and add nothing; reals carry all zeros (nothing edited).

:class:`AuxRegionModel` wraps a functional network with two outputs `[main, regions]`. Its
`call` returns the main output only, so prediction, evaluation, export and Grad-CAM see an
ordinary classifier (`main_model` gives the plain functional view); only its `train_step` knows
the region targets, which arrive as `y = (label, regions)`.
"""

from __future__ import annotations

import keras
from keras import ops

REGION_OUTPUT = "regions"


def masked_region_loss(targets, probs):
    """Mean binary cross-entropy over the known (>= 0) region targets of each image."""
    targets = ops.cast(targets, "float32")
    probs = ops.cast(probs, "float32")
    known = ops.cast(targets >= 0, "float32")
    per_region = ops.binary_crossentropy(ops.maximum(targets, 0.0), probs)
    return ops.sum(per_region * known) / ops.maximum(ops.sum(known), 1.0)


@keras.saving.register_keras_serializable(package="tfpipeline")
class AuxRegionModel(keras.Model):
    """A classifier trained with an auxiliary region loss (see the module docstring).

    Args:
        network: functional model with outputs `[main, regions]`.
        aux_weight: weight of the region loss beside the classification loss.
    """

    def __init__(self, network: keras.Model, aux_weight: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.aux_weight = float(aux_weight)
        self.built = network.built  # a functional network is built when made

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)[0]

    @property
    def main_model(self) -> keras.Model:
        """The classifier alone, as a functional model sharing this model's weights."""
        inputs = self.network.inputs
        inputs = inputs[0] if len(inputs) == 1 else inputs  # a tensor in, as for a plain classifier
        return keras.Model(inputs, self.network.outputs[0], name=self.network.name)

    def step_loss(self, x, label, regions, main, predicted):
        """One training batch's loss from the network's outputs (`regions`: None when the batch
        carries no region targets, which leaves the classification loss alone)."""
        loss = self.compute_loss(x=x, y=label, y_pred=main, training=True)
        if regions is not None:
            loss = loss + self.aux_weight * masked_region_loss(regions, predicted)
        return loss

    def train_step(self, data):
        import tensorflow as tf

        x, y = data[0], data[1]
        label, regions = y if isinstance(y, (tuple, list)) else (y, None)
        with tf.GradientTape() as tape:
            main, predicted = self.network(x, training=True)
            loss = self.step_loss(x, label, regions, main, predicted)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(main)[0])
        return self.compute_metrics(x, label, main, sample_weight=None)

    def get_config(self):
        return {
            "network": keras.saving.serialize_keras_object(self.network),
            "aux_weight": self.aux_weight,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)


def main_model(model: keras.Model) -> keras.Model:
    """`model` itself, or the plain classifier inside an :class:`AuxRegionModel`."""
    return model.main_model if isinstance(model, AuxRegionModel) else model
