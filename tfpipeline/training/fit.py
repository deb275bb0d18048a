"""Train one model on one dataset into a run folder.

`train()` is the library form of `tfpipeline train`: seed everything, load and check the data,
build and compile the registered model, fit it with the built-in Keras callbacks (CSVLogger,
ModelCheckpoint best/last, EarlyStopping, TensorBoard, BackupAndRestore, ReduceLROnPlateau) and
return the best model. Evaluation artefacts (metrics.json, plots) are the evaluation stage's job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import tfpipeline
from tfpipeline.config import RunConfig
from tfpipeline.data import DataBundle, load_data
from tfpipeline.data.sources import with_absolute_folder
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.hardware import PrecisionChoice, choose_precision, cpu_info, machine_record, visible_gpus
from tfpipeline.models import MODELS, build_model, get_spec, main_model, parameter_counts
from tfpipeline.models.precision import as_float32
from tfpipeline.training.callbacks import make_callbacks
from tfpipeline.training.compile import compile_model
from tfpipeline.training.metrics import monitor_metric
from tfpipeline.training.run_folder import RunFolder

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run hands to evaluation and export (`model`: the best or last
    checkpoint, computing in float32 whatever precision trained it: see
    :mod:`tfpipeline.models.precision`)."""

    run: RunFolder
    config: RunConfig
    model: keras.Model
    bundle: DataBundle
    history: pd.DataFrame
    scaling: str
    train_seconds: float
    stopped_early: bool


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


def _positive_first(bundle: DataBundle, dataset):
    """For binary data whose positive class is index 0, flip targets so 1 = positive."""
    if bundle.info.positive_index != 0:
        return dataset

    def flip(x, y):
        if isinstance(y, tuple):  # (label, region targets) of an auxiliary region head
            return x, (1.0 - y[0], y[1])
        return x, 1.0 - y

    return dataset.map(flip)


@dataclass(frozen=True)
class Prepared:
    """Data and model facts shared by a training run and by every tuner trial."""

    bundle: DataBundle
    scaling: str
    input_shape: tuple[int, int, int]
    num_classes: int
    steps_per_epoch: int
    epoch_rule: DecisionRule  # the decision rule per-epoch metrics use (threshold known before training)
    precision: PrecisionChoice
    init_images: np.ndarray | None = None  # training images for the model's data_init, if it has one


def prepare(config: RunConfig, *, epochs: tuple[int, int] | None = None) -> Prepared:
    """Seed, validate the model/image-size pair, and load the checked data.

    Args:
        config: the run configuration.
        epochs: `(first, stop)` to stream training epochs with epoch-keyed shuffles (resumable
            runs); None for a plain reshuffling dataset (tuner trials).
    """
    seed_everything(config.data.seed, config.train.deterministic)
    spec = get_spec(config.model.name)
    if min(config.data.image_size) < spec.min_image_size:
        raise UserError(
            f"--image-size {config.data.image_size[0]}x{config.data.image_size[1]} is below "
            f"{config.model.name}'s minimum of {spec.min_image_size}"
        )
    if config.data.crop and not spec.any_size:
        able = ", ".join(name for name, other in MODELS.items() if other.any_size)
        raise UserError(
            f"--crop trains on windows and evaluates whole images, which needs a model that accepts any "
            f"image size ({able}); {config.model.name} does not"
        )
    option = "--aux-regions" if config.model.aux_regions else "--region-crops"  # the region options
    regions = config.model.aux_regions > 0 or config.model.region_crops > 0
    if regions and not spec.aux_head:
        able = ", ".join(name for name, other in MODELS.items() if other.aux_head)
        raise UserError(f"{option} is available for {able}, not {config.model.name}")
    if regions and config.train.class_weight != "none":
        raise UserError(f"{option} cannot be combined with --class-weight (its targets carry no weights)")
    if config.model.region_crops and (config.data.augment.flip or config.data.crop):
        raise UserError(
            "--region-crops flips and shifts each region crop itself; a whole-image --flip would swap the "
            "eyes' targets, and --crop would move the regions: drop them"
        )
    precision = choose_precision(config.train.precision, cpu_info(), visible_gpus())
    scaling = resolve_scaling(config)
    bundle = load_data(config.data, scaling=scaling, epochs=epochs, region_targets=regions)
    info = bundle.info
    rule = DecisionRule.for_classes(config.train.threshold, info.class_names, info.positive_class)
    return Prepared(
        bundle=bundle,
        scaling=scaling,
        input_shape=(None, None, config.data.channels)
        if config.data.crop
        else (*config.data.image_size, config.data.channels),
        num_classes=bundle.info.num_classes,
        steps_per_epoch=math.ceil(len(bundle.splits["train"]) / config.data.batch_size),
        epoch_rule=dataclasses.replace(rule, value=rule.epoch_threshold(info.train_prior)),
        precision=precision,
        init_images=init_sample(bundle, config, scaling) if spec.data_init else None,
    )


INIT_SAMPLE = 5000  # training images a model's data-dependent initialisation looks at


def init_sample(bundle: DataBundle, config: RunConfig, scaling: str) -> np.ndarray:
    """Up to INIT_SAMPLE training images (seeded choice), decoded and scaled, not augmented."""
    from tfpipeline.data.pipeline import build_dataset

    split = bundle.splits["train"]
    keep = np.zeros(len(split), dtype=bool)
    chosen = np.random.default_rng(config.data.seed).permutation(len(split))[:INIT_SAMPLE]
    keep[chosen] = True
    dataset = build_dataset(
        split.subset(keep),
        dataclasses.replace(config.data, cache="none"),
        scaling=scaling,
        training=False,
        num_classes=bundle.info.num_classes,
        cache_name="init",
    )
    return np.concatenate([images for images, _ in dataset.as_numpy_iterator()])


def build_compiled_model(config: RunConfig, prepared: Prepared) -> keras.Model:
    """The registered model for `config` under the run's precision policy, initialised from the
    training images when the model asks for it, compiled with the run's optimiser, loss and
    metrics.

    The policy is Keras' process-wide default, read when layers are created: it is set for this
    model only and restored afterwards, so that models built later in the same process (another
    run, a tuner trial, a notebook's next cell) do not inherit a run's bfloat16.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(prepared.precision.policy)
    try:
        model = build_model(config.model, prepared.input_shape, prepared.num_classes)
        data_init = get_spec(config.model.name).data_init
        if data_init is not None and prepared.init_images is not None:
            data_init(model, prepared.init_images)
        return compile_model(
            model,
            config.train,
            prepared.num_classes,
            steps_per_epoch=prepared.steps_per_epoch,
            threshold=prepared.epoch_rule.value,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def fit_model(
    model: keras.Model,
    config: RunConfig,
    prepared: Prepared,
    callbacks: Sequence[keras.callbacks.Callback],
    *,
    initial_epoch: int = 0,
    verbose: str | int = "auto",
) -> keras.callbacks.History:
    """`model.fit` on the prepared data with class weights and positive-class targets."""
    bundle = prepared.bundle
    weights = None
    if config.train.class_weight == "balanced":
        binary = prepared.num_classes == 2
        targets = binary_targets(bundle, "train") if binary else bundle.splits["train"].labels
        weights = class_weights(targets, 2 if binary else prepared.num_classes)
    return model.fit(
        _positive_first(bundle, bundle.train),
        validation_data=_positive_first(bundle, bundle.val),
        epochs=config.train.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=prepared.steps_per_epoch,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        class_weight=weights,
        callbacks=list(callbacks),
        verbose=fit_verbosity(verbose),
    )


def fit_verbosity(verbose: str | int) -> int:
    """Keras `fit` verbosity: "auto" means a progress bar on a terminal, one line per epoch else.

    Keras 3 itself maps "auto" to the progress bar everywhere, which fills log files (CI, nohup,
    notebooks) with carriage returns and no readable per-epoch line.
    """
    if verbose != "auto":
        return int(verbose)
    return 1 if sys.stdout.isatty() else 2


def completed_epochs(run: RunFolder) -> int:
    """Epochs finished according to the run's BackupAndRestore state (0 for a new run)."""
    metadata = run.backup_dir / "training_metadata.json"
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def train(
    config: RunConfig,
    *,
    run: RunFolder | None = None,
    resume: bool = False,
    extra_callbacks: Sequence[Callable[[DataBundle, RunFolder, Prepared], keras.callbacks.Callback]] = (),
    verbose: str | int = "auto",
    facts: dict | None = None,
) -> TrainResult:
    """Fit `config.model` on `config.data` in a run folder and return the best model.

    Args:
        config: the resolved run configuration (written to the run folder).
        run: an existing run folder to continue (with `resume=True`); a new one otherwise.
        resume: continue from the run's BackupAndRestore state and append to its history.
            With `--deterministic`, the same seed and no dropout/augmentation randomness, the
            resumed history equals an uninterrupted run's.
        extra_callbacks: factories `(bundle, run, prepared) -> Callback` for more callbacks, e.g.
            the evaluation stage's TensorBoard figures (they need the loaded data).
        verbose: Keras verbosity; "auto" is a progress bar on a terminal and one line per epoch
            when stdout is a file or pipe (:func:`fit_verbosity`).
        facts: more facts for run.json (e.g. the recipe the config came from).

    Raises:
        UserError: for data or model problems, before any training starts.
    """
    config = dataclasses.replace(config, data=with_absolute_folder(config.data))
    first_epoch = completed_epochs(run) if (resume and run is not None) else 0
    if first_epoch >= config.train.epochs:
        raise UserError(
            f"{run.path}: already trained {first_epoch} of {config.train.epochs} epoch(s); "
            "pass a larger --epochs to continue"
        )
    prepared = prepare(config, epochs=(first_epoch, config.train.epochs))
    bundle = prepared.bundle
    model = build_compiled_model(config, prepared)

    trainable, non_trainable = parameter_counts(model)
    run = run or RunFolder.create(config.train.run_dir, config.model.name)
    if not resume:
        run.write_config(config)
        run.write_json(
            "classes.json",
            {"class_names": list(bundle.info.class_names), "positive_class": bundle.info.positive_class},
        )
        run.write_split_files(bundle.info.files, bundle.info.class_names)
    else:
        run.write_config(config)  # the epoch total may have grown
    run.update_run_info(
        status="running",
        model=config.model.name,
        scaling=prepared.scaling,
        input_shape=list(prepared.input_shape),
        data=bundle.info.summary(),
        trainable_params=trainable,
        total_params=trainable + non_trainable,
        precision=prepared.precision.as_json(),
        hardware=machine_record(),
        tfpipeline_version=tfpipeline.__version__,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        **(facts or {}),
    )
    log.info("precision: %s (%s)", prepared.precision.policy, prepared.precision.reason)

    callbacks = make_callbacks(run, config, prepared.num_classes, resume)
    callbacks += [make(bundle, run, prepared) for make in extra_callbacks]
    start = time.perf_counter()
    try:
        fit_model(model, config, prepared, callbacks, initial_epoch=first_epoch, verbose=verbose)
    except KeyboardInterrupt:
        run.update_run_info(status="interrupted")
        raise
    seconds = time.perf_counter() - start
    history = pd.read_csv(run.history_file)
    stopped_early = len(history) < config.train.epochs
    best_path = run.model_checkpoint()
    run.update_run_info(
        status="finished",
        epochs_run=len(history),
        train_seconds=round(seconds, 2),
        stopped_early=stopped_early,
        best_checkpoint=str(best_path.relative_to(run.path)),
        monitor=monitor_metric(prepared.num_classes),
    )
    return TrainResult(
        run=run,
        config=config,
        model=as_float32(main_model(keras.models.load_model(best_path))),  # predicts in float32
        bundle=bundle,
        history=history,
        scaling=prepared.scaling,
        train_seconds=seconds,
        stopped_early=stopped_early,
    )
