"""The Keras callbacks of a training run, built-in ones first.

Order matters: BackupAndRestore saves the raw weights (and the optimiser's averages) before
SwapEMAWeights puts the averaged weights in place for the checkpoints, logs and figures of an
`--ema` run, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import pandas as pd

from tfpipeline.config import RunConfig
from tfpipeline.training.metrics import monitor_metric
from tfpipeline.training.run_folder import RunFolder


class EpochStats(keras.callbacks.Callback):
    """Adds `epoch_seconds` and `learning_rate` to each epoch's logs (so CSVLogger keeps them)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _best_so_far(history_file: Path, monitor: str) -> float | None:
    if not history_file.is_file():
        return None
    history = pd.read_csv(history_file)
    return float(history[monitor].max()) if monitor in history and len(history) else None


def make_callbacks(run: RunFolder, config: RunConfig, num_classes: int, resume: bool) -> list:
    monitor = monitor_metric(num_classes)
    (run.path / "checkpoints").mkdir(exist_ok=True)
    callbacks = [
        EpochStats(),
        keras.callbacks.BackupAndRestore(str(run.backup_dir), delete_checkpoint=False),
    ]
    if config.train.ema > 0:
        # Validation runs on the averaged weights; at each epoch end they stay in place for the
        # checkpoints and logs below, and the raw weights come back at the next epoch's start.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if config.train.checkpoint == "best":
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(run.best_checkpoint),
                monitor=monitor,
                mode="max",
                save_best_only=True,
                initial_value_threshold=_best_so_far(run.history_file, monitor) if resume else None,
            )
        )
    callbacks += [
        keras.callbacks.ModelCheckpoint(str(run.last_checkpoint)),
        keras.callbacks.CSVLogger(str(run.history_file), append=resume),
        keras.callbacks.TensorBoard(str(run.tensorboard_dir), write_graph=False, profile_batch=0),
    ]
    if config.train.early_stopping > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=config.train.early_stopping)
        )
    if config.train.schedule == "plateau":
        patience = max(1, config.train.early_stopping // 2) if config.train.early_stopping else 2
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=patience, min_lr=1e-6)
        )
    return callbacks
