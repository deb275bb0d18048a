"""Typed, frozen configuration for every stage.

One dataclass per stage. Configs are built from CLI flags, from a YAML file (`--config`), or
from a tuner's hyperparameters; all three paths go through :func:`~tfpipeline.config_io.from_dict`,
which rejects unknown keys so a typo never silently falls back to a default. The resolved config
of a run is written to its run folder with :func:`~tfpipeline.config_io.to_dict` and reads back
into an identical object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tfpipeline.decision import check_policy
from tfpipeline.errors import UserError

RESIZE_METHODS = ("stretch", "crop", "pad")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3")
COLOR_MODES = ("rgb", "grayscale")
SCALINGS = ("model", "unit", "symmetric", "raw")
ACTIVATIONS = ("relu", "gelu")
STEMS = ("plain", "whiten", "srm", "residual")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle", "plateau")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
TTA_MODES = ("none", "flip", "flip-shift")
OOD_METHODS = ("mahalanobis", "energy", "msp", "autoencoder")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training batches only, after the cache.

    Every transform is off by default (a zero strength); strengths follow the matching Keras
    preprocessing layers: `rotation` is a fraction of a full turn, `zoom` and `translation` a
    fraction of the image side, `brightness` and `contrast` a relative factor. `shift` moves
    each image by a random whole number of pixels up to N in each direction, filling with the
    reflected border (the classic pad-and-crop of small-image training; no interpolation blur).
    `synth_fakes` turns that share of each batch's real images into self-blended fakes of
    `fake_class` (see :mod:`tfpipeline.data.blend`).
    """

    flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    shift: int = 0
    synth_fakes: float = 0.0
    fake_class: str = "fake"

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "translation", "brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"augmentation '{name}' must be in [0, 1), got {value}")
        if self.shift < 0:
            raise UserError(f"--shift must be a non-negative number of pixels, got {self.shift}")
        if not 0.0 <= self.synth_fakes <= 1.0:
            raise UserError(f"--synth-fakes is a share of each batch in [0, 1], got {self.synth_fakes}")

    @property
    def enabled(self) -> bool:
        return (
            self.flip
            or self.shift > 0
            or any(
                getattr(self, n) > 0 for n in ("rotation", "zoom", "translation", "brightness", "contrast")
            )
        )


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they become batches.

    Attributes:
        data: a folder, `tfds:NAME[:VERSION]`, or an embedded dataset name (`faces`, `digits`).
        split_ratios: train/val/test fractions used when a folder has no split subfolders.
        seed: seeds splitting, shuffling and augmentation.
        classes: explicit class order; alphabetical folder order when empty.
        positive_class: for binary tasks, the class precision/recall refer to (default: second).
        image_size: (height, width) fed to the model.
        color_mode: `rgb` or `grayscale`.
        resize: `stretch` (ignore aspect), `crop` (centre crop to aspect) or `pad` (letterbox).
        scaling: pixel range fed to the model; `model` uses the model's own preference.
        cache: `memory`, `none`, or a file path prefix for an on-disk tf.data cache.
        tfds_download: allow TFDS to download and prepare data (needs internet).
        skip_bad: drop files that fail the data check instead of refusing to start.
        fold: `K/N` replaces the train/val split by fold K (1-based) of a stratified N-fold
            partition of train+val (`tfpipeline cv` runs every fold); the test split is untouched.
        crop: train on random `crop` x `crop` windows of the `image_size` images (0: off);
            validation, evaluation and serving see whole images, so the model must accept any
            size (global pooling, e.g. fast_resnet).
    """

    data: str = "faces"
    split_ratios: tuple[float, float, float] = (0.75, 0.125, 0.125)
    seed: int = 101
    classes: tuple[str, ...] = ()
    positive_class: str | None = None
    tfds_data_dir: str | None = None
    tfds_download: bool = False
    image_size: tuple[int, int] = (224, 224)
    color_mode: str = "rgb"
    resize: str = "stretch"
    interpolation: str = "bilinear"
    scaling: str = "model"
    cache: str = "memory"
    batch_size: int = 32
    skip_bad: bool = False
    crop: int = 0
    fold: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _choice("color_mode", self.color_mode, COLOR_MODES)
        _choice("resize", self.resize, RESIZE_METHODS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("scaling", self.scaling, SCALINGS)
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios):
            raise UserError(f"--split-ratios needs three non-negative numbers, got {self.split_ratios}")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or self.split_ratios[0] <= 0 or self.split_ratios[1] <= 0:
            raise UserError(
                f"--split-ratios must sum to 1 with positive train and val parts, got {self.split_ratios}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise UserError(f"--image-size must be a positive size, got {self.image_size}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.fold:
            fold_numbers(self.fold)
        if self.crop < 0 or (self.crop and self.crop > min(self.image_size)):
            raise UserError(
                f"--crop must be a size up to the image size {self.image_size[0]}x{self.image_size[1]}, "
                f"got {self.crop}"
            )
        if len(set(self.classes)) != len(self.classes):
            raise UserError(f"--classes lists a class twice: {','.join(self.classes)}")

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3


def fold_numbers(fold: str) -> tuple[int, int]:
    """(k, n) of a `K/N` fold; UserError unless 1 <= K <= N and N >= 2."""
    try:
        k, n = (int(part) for part in fold.split("/"))
    except ValueError:
        k, n = 0, 0
    if not (n >= 2 and 1 <= k <= n):
        raise UserError(f"--fold must be K/N with 1 <= K <= N and N >= 2 (e.g. 2/5), got '{fold}'")
    return k, n


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--{option.replace('_', '-')} must be one of {', '.join(allowed)}; got '{value}'")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture choices; each registered builder reads the fields that apply to it.

    Attributes:
        name: registry key (`tfpipeline models` lists them).
        batchnorm / dropout / dropout_rate: small_cnn's regularisation switches.
        filters / dense_units: convolution widths and dense head widths (empty: the model's own).
        weights: `imagenet`, `none`, or a path to a `.h5` / `.weights.h5` file (pretrained models).
        fine_tune_layers: how many of the backbone's last layers to unfreeze (BatchNorm stays frozen).
        l2: L2 weight-decay factor on conv and dense kernels.
        padding: `valid` (the assessment's network) or `same` (allows small images).
        activation: `relu` or `gelu` for models that offer both (`auto`: the model's own).
        stem: the first layer(s), e.g. fast_resnet's `whiten` (patch-whitening initialised from
            the training images) or `plain`; `auto`: the model's own.
        init: `identity` starts square 3x3 convolutions as identity maps (dirac), `default`
            keeps Keras' initialisers; `auto`: the model's own.
        bn_momentum: BatchNormalization's moving-average momentum (Keras convention; 0: the
            model's own). Short trainings want a low value (fast_resnet: 0.4).
        head_scale: factor on the output layer's logits (0: the model's own; fast_resnet 1/9).
        aux_regions: weight of an auxiliary head that names the edited face regions (eyes, nose,
            mouth) of a fake, learnt from CIPLAB file names and self-blended fakes (0: off).
        region_crops: side in pixels of the crops around the eyes, nose and mouth that a
            region-crop model classifies one by one (0: off; :mod:`tfpipeline.models.region_crops`).
    """

    name: str = "small_cnn"
    batchnorm: bool = False
    dropout: bool = False
    dropout_rate: float = 0.2
    filters: tuple[int, ...] = ()
    dense_units: tuple[int, ...] = ()
    weights: str = "imagenet"
    fine_tune_layers: int = 0
    l2: float = 0.0
    padding: str = "valid"
    activation: str = "auto"
    stem: str = "auto"
    init: str = "auto"
    bn_momentum: float = 0.0
    head_scale: float = 0.0
    aux_regions: float = 0.0
    region_crops: int = 0

    def __post_init__(self) -> None:
        _choice("padding", self.padding, ("valid", "same"))
        _choice("activation", self.activation, ("auto", *ACTIVATIONS))
        _choice("stem", self.stem, ("auto", *STEMS))
        _choice("init", self.init, ("auto", "default", "identity"))
        if not 0.0 <= self.bn_momentum < 1.0:
            raise UserError(f"--bn-momentum must be in [0, 1), got {self.bn_momentum}")
        if self.aux_regions < 0:
            raise UserError(f"--aux-regions is a loss weight (e.g. 0.1; 0: off), got {self.aux_regions}")
        if self.region_crops < 0:
            raise UserError(
                f"--region-crops is a crop side in pixels (e.g. 80; 0: off), got {self.region_crops}"
            )
        if self.head_scale < 0:
            raise UserError(f"--head-scale must be positive (0: the model's own), got {self.head_scale}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"--dropout-rate must be in [0, 1), got {self.dropout_rate}")
        if self.l2 < 0:
            raise UserError(f"--l2 must be non-negative, got {self.l2}")
        if self.fine_tune_layers < 0:
            raise UserError(f"--fine-tune-layers must be non-negative, got {self.fine_tune_layers}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run bookkeeping. Defaults reproduce the assessment (SGD 1e-3, m=0.9).

    Attributes (beyond the obvious):
        nesterov: Nesterov momentum (SGD).
        weight_decay: decoupled weight decay (each step shrinks weights by lr * weight_decay);
            None: the optimiser's default (adamw 1e-4, otherwise none).
        schedule: `cosine` decays to 0; `onecycle` rises linearly from 0.2 * lr to lr over the
            first `warmup` share of steps, then falls linearly to 0.07 * lr (the triangular
            schedule of fast CIFAR training); `plateau` halves lr when val loss stalls.
        warmup: share of the steps spent rising (onecycle; default 0.23), or a linear warm-up
            before cosine decay (default 0).
        norm_lr_scale: learning-rate multiplier for BatchNorm offsets (SGD), which fast training
            recipes raise far above the weights' rate.
        lookahead: SGD lookahead (airbench): every this many steps the weights are reset to a
            slow average of themselves, which averages more and more toward the end of the
            run; at the last step they become the average (0: off).
        ema: decay of an exponential moving average of the weights (0: off); validation,
            checkpoints and the final model use the averaged weights.
        tta: test-time augmentation at evaluation, prediction and in exported models: `flip`
            averages the predictions of the image and its mirror image.
        precision: `float32`, `bfloat16` / `float16` mixed precision, or `auto` (chosen from the
            hardware: see `tfpipeline.hardware.choose_precision`).
        ood: the out-of-domain detector fitted after training (:mod:`tfpipeline.ood`):
            `mahalanobis`, `energy`, `msp`, `autoencoder`, or `none`.
        ood_accept: share of in-domain validation images the detector's threshold accepts.
        epoch_figures: log the validation ROC and confusion-matrix images to TensorBoard every
            this many epochs and at the last one (0: never; the run's plots/ always get the
            final ones). Each costs one more pass over the validation split.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    schedule: str = "none"
    warmup: float | None = None
    norm_lr_scale: float = 1.0
    lookahead: int = 0
    ema: float = 0.0
    tta: str = "none"
    precision: str = "auto"
    checkpoint: str = "best"
    early_stopping: int = 0
    class_weight: str = "none"
    label_smoothing: float = 0.0
    threshold: str = "0.5"
    deterministic: bool = False
    run_dir: str = "runs"
    steps_per_execution: int = 1
    ood: str = "mahalanobis"
    ood_accept: float = 0.95
    epoch_figures: int = 1

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("ood", self.ood, (*OOD_METHODS, "none"))
        if not 0.0 < self.ood_accept < 1.0:
            raise UserError(f"--ood-accept is a share of validation images in (0, 1), got {self.ood_accept}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("tta", self.tta, TTA_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("checkpoint", self.checkpoint, ("best", "last"))
        if self.nesterov and self.optimizer != "sgd":
            raise UserError(f"--nesterov applies to --optimizer sgd, not {self.optimizer}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError(f"--weight-decay must be non-negative, got {self.weight_decay}")
        if self.warmup is not None and not 0.0 <= self.warmup < 1.0:
            raise UserError(f"--warmup is a share of the training steps in [0, 1), got {self.warmup}")
        if self.warmup and self.schedule not in ("cosine", "onecycle"):
            raise UserError(f"--warmup applies to --schedule cosine or onecycle, not {self.schedule}")
        if self.norm_lr_scale <= 0:
            raise UserError(f"--norm-lr-scale must be positive, got {self.norm_lr_scale}")
        if self.norm_lr_scale != 1.0 and self.optimizer != "sgd":
            raise UserError("--norm-lr-scale applies to --optimizer sgd (adaptive optimisers rescale steps)")
        if self.lookahead < 0:
            raise UserError(f"--lookahead is a number of steps between syncs (0: off), got {self.lookahead}")
        if self.lookahead and self.optimizer != "sgd":
            raise UserError(f"--lookahead applies to --optimizer sgd, not {self.optimizer}")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"--ema is a decay in [0, 1) (e.g. 0.999; 0: off), got {self.ema}")
        _choice("class_weight", self.class_weight, ("none", "balanced"))
        check_policy(self.threshold)
        if self.epoch_figures < 0:
            raise UserError(f"--epoch-figures is a number of epochs (0: never), got {self.epoch_figures}")
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; this is what `--config FILE.yaml` and run folders hold."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
