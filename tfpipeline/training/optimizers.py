"""Learning-rate schedules and the optimiser options Keras does not ship as such.

- :class:`OneCycle`: the triangular schedule of fast CIFAR training (airbench): a linear rise
  from `start` x peak to the peak over the first `warmup` share of the steps, then a linear
  fall to `end` x peak.
- :class:`WarmupCosine`: cosine decay to zero after an optional linear warm-up (Keras'
  `CosineDecay` has a warm-up, but only one that starts from 0 and adds steps).
- :class:`FastSGD`: SGD with the two options of fast CIFAR training that Keras lacks: a
  learning-rate multiplier for chosen variables (BatchNorm offsets), and lookahead (a slow copy
  of the weights the weights are reset to every few steps).

All three are registered Keras serialisables, so checkpoints of compiled models reload.
"""

from __future__ import annotations

import keras
import tensorflow as tf
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


LOOKAHEAD_STEP_DECAY = 0.95  # airbench's: per step, so a sync every k steps decays 0.95**k


@keras.saving.register_keras_serializable(package="tfpipeline")
class FastSGD(keras.optimizers.SGD):
    """SGD with a learning-rate multiplier for some variables, and lookahead.

    - **Scaled variables**: for SGD with momentum, scaling a variable's gradient by k is exactly
      scaling its learning rate by k; decoupled weight decay is applied separately and unscaled
      (airbench trains BatchNorm offsets at 64x the weights' rate).
    - **Lookahead** (airbench's form of Zhang et al., 2019): every `lookahead` steps a slow copy
      of the trainable variables moves toward them, slow += (1 - d) (w - slow), and the variables
      are reset to it. The decay d = 0.95**lookahead * (step / total_steps)**3 is ~0 early (the
      copy just follows the weights while they move fast) and 0.77 per sync at the end; at step
      `total_steps` the variables become the slow copy itself. BatchNorm's moving statistics are
      not averaged: at fast-training momentum they follow the weights within a few steps.
      The slow copy is an optimizer variable, so checkpoints hold it and a resumed run continues
      exactly.

    Args:
        scaled_paths: the `Variable.path`s to scale (the training stage lists the model's
            BatchNorm offsets).
        scale: the multiplier.
        lookahead: steps between syncs (0: off).
        total_steps: optimiser steps in the run (the lookahead's schedule and its last sync).
    """

    def __init__(
        self,
        *args,
        scaled_paths: tuple[str, ...] = (),
        scale: float = 1.0,
        lookahead: int = 0,
        total_steps: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.scaled_paths = tuple(scaled_paths)
        self.scale = float(scale)
        self.lookahead, self.total_steps = int(lookahead), int(max(1, total_steps))

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.lookahead:
            self._slow = self.add_optimizer_variables(variables, "slow")
            # Eagerly, once: Keras may build the optimizer while tracing the first train step,
            # and an assign there would become part of every step.
            with tf.init_scope():
                for slow, variable in zip(self._slow, variables, strict=True):
                    slow.assign(variable)

    def apply(self, grads, trainable_variables=None):
        if self.scale != 1.0:
            variables = trainable_variables if trainable_variables is not None else self._trainable_variables
            scaled = set(self.scaled_paths)
            grads = [
                g * self.scale if v.path in scaled and g is not None else g
                for g, v in zip(grads, variables, strict=True)
            ]
        super().apply(grads, trainable_variables)
        if self.lookahead:
            self._lookahead_sync()

    def _lookahead_sync(self) -> None:
        step = self.iterations  # already counts the step just taken
        last = ops.equal(step, self.total_steps)
        progress = ops.minimum(ops.cast(step, "float32") / float(self.total_steps), 1.0)
        decay = ops.where(last, 1.0, LOOKAHEAD_STEP_DECAY**self.lookahead * progress**3)

        def sync():
            for slow, variable in zip(self._slow, self._trainable_variables, strict=True):
                slow.assign(slow + (1.0 - ops.cast(decay, slow.dtype)) * (variable - slow))
                variable.assign(ops.cast(slow, variable.dtype))

        due = ops.logical_or(ops.equal(step % self.lookahead, 0), last)
        ops.cond(due, sync, lambda: None)

    def get_config(self):
        return {
            **super().get_config(),
            "scaled_paths": list(self.scaled_paths),
            "scale": self.scale,
            "lookahead": self.lookahead,
            "total_steps": self.total_steps,
        }
