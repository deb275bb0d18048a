"""Learning-rate schedules and the optimiser options Keras does not ship as such.

- :class:`OneCycle`: the triangular schedule of fast CIFAR training (airbench): a linear rise
  from `start` x peak to the peak over the first `warmup` share of the steps, then a linear
  fall to `end` x peak.
- :class:`WarmupCosine`: cosine decay to zero after an optional linear warm-up (Keras'
  `CosineDecay` has a warm-up, but only one that starts from 0 and adds steps).
- :class:`ScaledSGD`: SGD whose step for chosen variables (BatchNorm offsets) is a multiple of
  the base learning rate. For SGD with momentum, scaling a variable's gradient by k is exactly
  scaling its learning rate by k; decoupled weight decay is applied separately and unscaled.

All three are registered Keras serialisables, so checkpoints of compiled models reload.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfpipeline")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `start * peak` to `peak`, then linear decay to `end * peak`."""

    def __init__(
        self, peak: float, total_steps: int, warmup: float = 0.23, start: float = 0.2, end: float = 0.07
    ):
        self.peak, self.total_steps, self.warmup = float(peak), int(max(1, total_steps)), float(warmup)
        self.start, self.end = float(start), float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        total = float(self.total_steps)
        rise = max(self.warmup * total, 1.0)
        up = self.start + (1.0 - self.start) * step / rise
        down = 1.0 - (1.0 - self.end) * (step - rise) / max(total - rise, 1.0)
        factor = ops.where(step < rise, up, ops.maximum(down, self.end))
        return self.peak * factor

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "start": self.start,
            "end": self.end,
        }


@keras.saving.register_keras_serializable(package="tfpipeline")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup` x total steps (from 0), then cosine decay to 0."""

    def __init__(self, peak: float, total_steps: int, warmup: float = 0.0):
        self.peak, self.total_steps, self.warmup = float(peak), int(max(1, total_steps)), float(warmup)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        total = float(self.total_steps)
        rise = self.warmup * total
        progress = ops.clip((step - rise) / max(total - rise, 1.0), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        if rise <= 0:
            return self.peak * cosine
        return self.peak * ops.where(step < rise, step / rise, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}


@keras.saving.register_keras_serializable(package="tfpipeline")
class ScaledSGD(keras.optimizers.SGD):
    """SGD with a learning-rate multiplier for some variables.

    Args:
        scaled_paths: the `Variable.path`s to scale (the training stage lists the model's
            BatchNorm offsets).
        scale: the multiplier.
    """

    def __init__(self, *args, scaled_paths: tuple[str, ...] = (), scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled_paths = tuple(scaled_paths)
        self.scale = float(scale)

    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        scaled = set(self.scaled_paths)
        grads = [
            g * self.scale if v.path in scaled and g is not None else g
            for g, v in zip(grads, variables, strict=True)
        ]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "scaled_paths": list(self.scaled_paths), "scale": self.scale}
