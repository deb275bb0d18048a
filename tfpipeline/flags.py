"""Command-line flags shared by several subcommands, and their mapping onto RunConfig.

Every flag belongs to one config section (`data`, `model`, `train`) and one field. Flags are
registered with `argparse.SUPPRESS` defaults, so the parsed namespace holds only what the user
typed; :func:`resolve_run_config` layers those over `--config FILE.yaml` over the dataclass
defaults. A YAML file may use the same flat flag names (`lr: 0.01`) or the nested sections a
run folder's `config.yaml` has (`train: {lr: 0.01}`).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from tfpipeline.config import (
    ACTIVATIONS,
    INTERPOLATIONS,
    OOD_METHODS,
    OPTIMIZERS,
    PRECISIONS,
    RESIZE_METHODS,
    SCALINGS,
    SCHEDULES,
    STEMS,
    TTA_MODES,
    AugmentConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from tfpipeline.config_io import from_dict, load_yaml
from tfpipeline.errors import UserError

AUGMENT_FIELDS = {f.name for f in fields(AugmentConfig)}


def parse_image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got '{text}'") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got '{text}'")
    return parts[0], parts[1]


def int_at_least(minimum: int):
    """An argparse `type` for whole numbers >= `minimum`, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_data_flags(parser: argparse.ArgumentParser, *, with_data: bool = True) -> None:
    """Flags that select and shape the data (shared by data, train, tune, evaluate)."""
    group = parser.add_argument_group("data")
    if with_data:
        group.add_argument(
            "--data", help="image folder, tfds:NAME[:VERSION], or embedded 'faces' (default) / 'digits'"
        )
    group.add_argument(
        "--split-ratios", type=parse_floats, help="train,val,test fractions (default 0.75,0.125,0.125)"
    )
    group.add_argument(
        "--seed", type=int, help="seed for splits, shuffling, augmentation, init (default 101)"
    )
    group.add_argument(
        "--classes", type=parse_names, help="comma-separated class order (default: alphabetical)"
    )
    group.add_argument("--positive-class", help="binary tasks: class that precision/recall refer to")
    group.add_argument("--tfds-data-dir", help="folder holding prepared TFDS data")
    group.add_argument("--tfds-download", action="store_true", help="let TFDS download missing data")
    group.add_argument("--image-size", type=parse_image_size, help="SIZE or HEIGHTxWIDTH (default 224)")
    group.add_argument("--grayscale", action="store_true", help="single-channel images")
    group.add_argument("--resize", choices=RESIZE_METHODS, help="stretch (default), crop or pad")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (default bilinear)")
    group.add_argument("--scaling", choices=SCALINGS, help="pixel range; 'model' (default) asks the model")
    group.add_argument("--cache", help="memory (default), none, or a file path prefix for an on-disk cache")
    group.add_argument("--batch-size", type=int, help="default 32")
    group.add_argument("--skip-bad", action="store_true", help="drop files that fail the data check")
    group.add_argument(
        "--crop", type=int, metavar="SIZE", help="train on random SIZExSIZE windows; evaluate whole images"
    )
    group.add_argument(
        "--fold", metavar="K/N", help="train/val = fold K of a stratified N-fold split of train+val"
    )


def add_augment_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("augmentation (training batches only; all off by default)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    group.add_argument(
        "--shift",
        type=int,
        metavar="PIXELS",
        help="random whole-pixel shifts up to PIXELS (reflected border)",
    )
    group.add_argument(
        "--synth-fakes",
        type=float,
        metavar="RATE",
        help="turn this share of each batch's real faces into self-blended fakes (real/fake tasks)",
    )
    group.add_argument("--fake-class", help="the fake class for --synth-fakes (default: fake)")
    for name, meaning in (
        ("rotation", "fraction of a full turn"),
        ("zoom", "fraction of the side"),
        ("translation", "fraction of the side"),
        ("brightness", "relative factor"),
        ("contrast", "relative factor"),
    ):
        group.add_argument(f"--{name}", type=float, metavar="S", help=f"random {name} strength ({meaning})")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="registry name (see `tfpipeline models`); default small_cnn")
    group.add_argument(
        "--batchnorm", action=argparse.BooleanOptionalAction, help="small_cnn: batch norm after blocks 1-2"
    )
    group.add_argument(
        "--dropout", action=argparse.BooleanOptionalAction, help="dropout after the first dense layers"
    )
    group.add_argument("--dropout-rate", type=float, help="default 0.2")
    group.add_argument("--filters", type=parse_ints, help="conv widths, e.g. 16,32,64,64")
    group.add_argument("--dense-units", type=parse_ints, help="dense head widths, e.g. 128,64,32")
    group.add_argument("--weights", help="pretrained models: imagenet (default), none, or a .h5 file")
    group.add_argument("--fine-tune-layers", type=int, help="unfreeze the backbone's last N layers")
    group.add_argument("--l2", type=float, help="L2 weight decay on kernels")
    group.add_argument("--padding", choices=("valid", "same"), help="conv padding (same allows small images)")
    group.add_argument(
        "--activation", choices=("auto", *ACTIVATIONS), help="models offering a choice: relu or gelu"
    )
    group.add_argument(
        "--stem",
        choices=("auto", *STEMS),
        help="first layer: whiten (from the training images' patches), plain conv, srm or residual "
        "(fixed high-pass filters); see `tfpipeline models` for what each model accepts",
    )
    group.add_argument("--init", choices=("auto", "default", "identity"), help="identity: dirac conv init")
    group.add_argument(
        "--bn-momentum", type=float, help="BatchNorm moving-average momentum (Keras convention)"
    )
    group.add_argument("--head-scale", type=float, help="factor on the output logits (0: the model's own)")
    group.add_argument(
        "--aux-regions",
        type=float,
        metavar="WEIGHT",
        help="fast_resnet: an auxiliary head naming the edited face regions, this loss weight (e.g. 0.1)",
    )
    group.add_argument(
        "--region-crops",
        type=int,
        metavar="SIZE",
        help="fast_resnet, real/fake faces: classify SIZE-pixel crops of the eyes, nose and mouth, each "
        "trained on its own edited/unedited target, and score the image by their mean (e.g. "
        "--image-size 256 --region-crops 80; the crops flip and shift themselves: no --flip/--shift)",
    )


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--config", help="YAML file with any of these options (flags override it)")
    group.add_argument("--epochs", type=int, help="default 10")
    group.add_argument("--recipe", help="a named training recipe (`tfpipeline recipes`); flags override it")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd")
    group.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    group.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    group.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (SGD)")
    group.add_argument(
        "--weight-decay", type=float, help="decoupled weight decay (default: adamw 1e-4, else 0)"
    )
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule: cosine, onecycle (triangular: up, then down), plateau",
    )
    group.add_argument(
        "--warmup", type=float, metavar="SHARE", help="share of steps warming up (cosine/onecycle)"
    )
    group.add_argument("--norm-lr-scale", type=float, help="SGD: lr multiplier for BatchNorm offsets")
    group.add_argument(
        "--lookahead",
        type=int,
        metavar="STEPS",
        help="SGD: every STEPS steps, reset the weights to their slow average (0: off)",
    )
    group.add_argument("--ema", type=float, metavar="DECAY", help="average the weights (e.g. 0.999); 0: off")
    group.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation: flip averages image + mirror; flip-shift adds 1-pixel shifts",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default: from the hardware), float32, bfloat16, float16",
    )
    group.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="epochs without improvement")
    group.add_argument("--class-weight", choices=("none", "balanced"), help="weight classes by frequency")
    group.add_argument("--label-smoothing", type=float, help="default 0")
    group.add_argument(
        "--threshold",
        help="binary decision threshold: 0.5 (default), a number, prior, tuned (best validation F1), "
        "accuracy (best validation accuracy), recall:R, fpr:F",
    )
    group.add_argument("--deterministic", action="store_true", help="deterministic ops (slower)")
    group.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        help="keep the best epoch by validation score (default) or the last one (no selection on val)",
    )
    group.add_argument("--run-dir", help="parent folder of run folders (default runs)")
    group.add_argument("--steps-per-execution", type=int, help="batches per compiled step (default 1)")
    group.add_argument(
        "--epoch-figures",
        type=int,
        metavar="N",
        help="TensorBoard ROC/confusion images every N epochs and at the last (default 1; 0: never)",
    )
    group.add_argument(
        "--ood",
        choices=(*OOD_METHODS, "none"),
        help="out-of-domain detector fitted after training (default mahalanobis; none: skip)",
    )
    group.add_argument(
        "--ood-accept",
        type=float,
        metavar="SHARE",
        help="share of in-domain validation images the OOD threshold accepts (default 0.95)",
    )


# Flag destination -> (section, field). Flags not listed map to the field of the same name.
_RENAMED = {"model": ("model", "name"), "grayscale": ("data", "color_mode")}
_SECTIONS = {
    "data": {f.name for f in fields(DataConfig)} - {"augment"},
    "model": {f.name for f in fields(ModelConfig)} - {"name"},
    "train": {f.name for f in fields(TrainConfig)},
}


def _place(key: str, value: Any, nested: dict[str, dict], where: str) -> None:
    """Put one flat option into its section of `nested`."""
    if key in _RENAMED:
        section, name = _RENAMED[key]
        if key == "grayscale":
            value = "grayscale" if value else "rgb"
        nested[section][name] = value
        return
    if key in AUGMENT_FIELDS:
        nested["data"].setdefault("augment", {})[key] = value
        return
    for section, names in _SECTIONS.items():
        if key in names:
            nested[section][key] = value
            return
    raise UserError(f"{where}: unknown option '{key}'")


def _flatten_yaml(values: dict[str, Any], where: str) -> dict[str, dict]:
    nested: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in nested and isinstance(value, dict):
            for inner_key, inner in value.items():
                if key == "data" and inner_key == "augment" and isinstance(inner, dict):
                    nested["data"].setdefault("augment", {}).update(inner)
                elif key == "model" and inner_key == "name":
                    nested["model"]["name"] = inner
                else:
                    nested[key][inner_key] = inner
        else:
            _place(key, value, nested, where)
    return nested


# Namespace entries that are CLI plumbing, not configuration.
_NOT_CONFIG = {
    "config",
    "command",
    "debug",
    "func",
    "action",
    "resume",
    "subcommand",
    "argv",
    "recipe",
    "folds",
    "out",
}


def chosen_recipe(args: argparse.Namespace):
    """The `--recipe` named on the command line, loaded (None without one)."""
    name = getattr(args, "recipe", None)
    if not name:
        return None
    from tfpipeline.recipes import load_recipe

    return load_recipe(name)


def resolve_run_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- `--recipe` <- `base` (e.g. a resumed run's config) <- `--config` YAML <- flags."""
    layers = []
    recipe = chosen_recipe(args)
    if recipe is not None:
        layers.append(_flatten_yaml(recipe.options, f"recipe {recipe.name}"))
    if base:
        layers.append(_flatten_yaml(base, "base config"))
    config_file = getattr(args, "config", None)
    if config_file:
        layers.append(_flatten_yaml(load_yaml(config_file), str(config_file)))
    typed: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for key, value in vars(args).items():
        if key in _NOT_CONFIG or value is None:
            continue
        _place(key, value, typed, "flag")
    layers.append(typed)
    return merge_layers(layers, str(config_file or "options"))


def merge_layers(layers: list[dict[str, dict]], where: str) -> RunConfig:
    """The RunConfig of option layers (each `{"data": ..., "model": ..., "train": ...}`), later
    layers overriding earlier ones field by field."""
    nested: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for layer in layers:
        for section in nested:
            augment = layer[section].get("augment")
            nested[section].update({k: v for k, v in layer[section].items() if k != "augment"})
            if augment:
                nested[section].setdefault("augment", {}).update(augment)
    return from_dict(RunConfig, nested, where=where)


def options_layer(values: dict[str, Any], where: str) -> dict[str, dict]:
    """A mapping of options (flat flag names or `data`/`model`/`train` sections) as one layer."""
    return _flatten_yaml(values, where)


def data_config_from_args(args: argparse.Namespace, data: str | None = None) -> DataConfig:
    """DataConfig from data flags only (the `data` subcommands)."""
    nested: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for key, value in vars(args).items():
        if value is None:  # not given: keep the DataConfig default
            continue
        if key in _SECTIONS["data"] or key in ("grayscale",) or key in AUGMENT_FIELDS:
            _place(key, value, nested, "flag")
    if data is not None:
        nested["data"]["data"] = data
    return from_dict(DataConfig, nested["data"], where="options")
