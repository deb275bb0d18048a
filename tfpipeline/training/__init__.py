"""The training stage: compile, fit with Keras callbacks, and keep everything in a run folder."""

from tfpipeline.training.fit import TrainResult, resolve_scaling, train
from tfpipeline.training.run_folder import RunFolder

__all__ = ["RunFolder", "TrainResult", "resolve_scaling", "train"]
