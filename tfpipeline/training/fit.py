"""Train one model on one dataset into a run folder.

`train()` is the library form of `tfpipeline train`: seed everything, load and check the data,
build and compile the registered model, fit it with the built-in Keras callbacks (CSVLogger,
ModelCheckpoint best/last, EarlyStopping, TensorBoard, BackupAndRestore, ReduceLROnPlateau) and
return the best model. Evaluation artefacts (metrics.json, plots) are the evaluation stage's job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import tfpipeline
from tfpipeline.config import RunConfig
from tfpipeline.data import DataBundle, load_data
from tfpipeline.errors import UserError
from tfpipeline.models import build_model, get_spec
from tfpipeline.training.compile import compile_model, resolve_threshold
from tfpipeline.training.metrics import monitor_metric
from tfpipeline.training.run_folder import RunFolder


@dataclass
class TrainResult:
    """What a finished training run hands to evaluation and export."""

    run: RunFolder
    config: RunConfig
    model: keras.Model
    bundle: DataBundle
    history: pd.DataFrame
    scaling: str
    train_seconds: float
    stopped_early: bool


class EpochStats(keras.callbacks.Callback):
    """Adds `epoch_seconds` and `learning_rate` to each epoch's logs (so CSVLogger keeps them)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def resolve_scaling(config: RunConfig) -> str:
    """The pixel range fed to the model: the data config's, or the model's own preference."""
    if config.data.scaling != "model":
        return config.data.scaling
    return get_spec(config.model.name).input_scaling


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TF; optionally force deterministic TF kernels (slower)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray, num_outputs: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights, n / (k * count), keyed by training target."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.arange(num_outputs)
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    lookup = dict(zip(present.tolist(), weights.tolist(), strict=True))
    return {int(c): float(lookup.get(c, 1.0)) for c in classes}


def binary_targets(bundle: DataBundle, split: str) -> np.ndarray:
    """0/1 targets of a split where 1 means the positive class (what the sigmoid scores)."""
    return (bundle.splits[split].labels == bundle.info.positive_index).astype(np.int32)


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
        keras.callbacks.ModelCheckpoint(
            str(run.best_checkpoint),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            initial_value_threshold=_best_so_far(run.history_file, monitor) if resume else None,
        ),
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


def _positive_first(bundle: DataBundle, dataset):
    """For binary data whose positive class is index 0, flip targets so 1 = positive."""
    if bundle.info.positive_index == 0:
        return dataset.map(lambda x, y: (x, 1.0 - y))
    return dataset


def train(
    config: RunConfig,
    *,
    run: RunFolder | None = None,
    resume: bool = False,
    extra_callbacks: Sequence[Callable[[DataBundle, RunFolder], keras.callbacks.Callback]] = (),
    verbose: str | int = "auto",
) -> TrainResult:
    """Fit `config.model` on `config.data` and return the best model.

    Args:
        config: the resolved run configuration (written to the run folder).
        run: an existing run folder to continue (with `resume=True`); a new one otherwise.
        resume: continue from the run's BackupAndRestore state and append to its history.
        extra_callbacks: factories `(bundle, run) -> Callback` for more callbacks, e.g. the
            evaluation stage's TensorBoard figures (they need the loaded data).
        verbose: Keras verbosity ("auto": progress bar on a terminal, one line per epoch else).

    Raises:
        UserError: for data or model problems, before any training starts.
    """
    seed_everything(config.data.seed, config.train.deterministic)
    spec = get_spec(config.model.name)
    scaling = resolve_scaling(config)
    if min(config.data.image_size) < spec.min_image_size:
        raise UserError(
            f"--image-size {config.data.image_size[0]}x{config.data.image_size[1]} is below "
            f"{config.model.name}'s minimum of {spec.min_image_size}"
        )
    bundle = load_data(config.data, scaling=scaling)
    num_classes = bundle.info.num_classes
    input_shape = (*config.data.image_size, config.data.channels)
    model = build_model(config.model, input_shape, num_classes)

    train_size = len(bundle.splits["train"])
    steps_per_epoch = math.ceil(train_size / config.data.batch_size)
    threshold = resolve_threshold(config.train.threshold, bundle.info.train_prior)
    compile_model(model, config.train, num_classes, steps_per_epoch=steps_per_epoch, threshold=threshold)

    run = run or RunFolder.create(config.train.run_dir, config.model.name)
    if not resume:
        run.write_config(config)
        run.write_json(
            "classes.json",
            {"class_names": list(bundle.info.class_names), "positive_class": bundle.info.positive_class},
        )
        run.write_split_files(bundle.info.files, bundle.info.class_names)
    run.update_run_info(
        status="running",
        model=config.model.name,
        scaling=scaling,
        input_shape=list(input_shape),
        data=bundle.info.summary(),
        trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        total_params=int(model.count_params()),
        tfpipeline_version=tfpipeline.__version__,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )

    weights = None
    if config.train.class_weight == "balanced":
        targets = binary_targets(bundle, "train") if num_classes == 2 else bundle.splits["train"].labels
        weights = class_weights(targets, 2 if num_classes == 2 else num_classes)

    callbacks = make_callbacks(run, config, num_classes, resume) + [
        make(bundle, run) for make in extra_callbacks
    ]
    start = time.perf_counter()
    try:
        fit = model.fit(
            _positive_first(bundle, bundle.train),
            validation_data=_positive_first(bundle, bundle.val),
            epochs=config.train.epochs,
            shuffle=False,  # the tf.data pipeline shuffles (seeded)
            class_weight=weights,
            callbacks=callbacks,
            verbose=verbose,
        )
    except KeyboardInterrupt:
        run.update_run_info(status="interrupted")
        raise
    seconds = time.perf_counter() - start
    history = pd.read_csv(run.history_file)
    stopped_early = len(history) < config.train.epochs
    best_path = run.model_checkpoint()
    best_model = keras.models.load_model(best_path)
    run.update_run_info(
        status="finished",
        epochs_run=len(history),
        train_seconds=round(seconds, 2),
        stopped_early=stopped_early,
        best_checkpoint=str(best_path.relative_to(run.path)),
        monitor=monitor_metric(num_classes),
    )
    del fit
    return TrainResult(
        run=run,
        config=config,
        model=best_model,
        bundle=bundle,
        history=history,
        scaling=scaling,
        train_seconds=seconds,
        stopped_early=stopped_early,
    )


def resume_config(run: RunFolder, epochs: int | None = None) -> RunConfig:
    """The stored config of `run`, optionally with a new epoch total."""
    config = run.read_config()
    if epochs is not None:
        config = replace(config, train=replace(config.train, epochs=epochs))
    return config
