"""`tfpipeline models [show NAME]` and `tfpipeline train`."""

from __future__ import annotations

import argparse

from tfpipeline.flags import (
    add_augment_flags,
    add_data_flags,
    add_model_flags,
    add_train_flags,
    chosen_recipe,
    parse_image_size,
    resolve_run_config,
)

HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def cmd_models(args: argparse.Namespace) -> int:
    from tfpipeline.models import MODELS

    for name, spec in MODELS.items():
        print(f"{name:16s} {spec.description}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from tfpipeline.config import ModelConfig
    from tfpipeline.models import model_summary

    config = ModelConfig(
        name=args.name,
        batchnorm=args.batchnorm,
        dropout=args.dropout,
        weights=args.weights,
        padding=args.padding,
    )
    height, width = args.image_size
    print(model_summary(config, (height, width, 1 if args.grayscale else 3), args.num_classes))
    return 0


def format_metrics(metrics: dict) -> str:
    """One line per split with the headline numbers."""
    lines = []
    for split in ("val", "test"):
        if split in metrics:
            values = metrics[split]
            shown = "  ".join(f"{k}={values[k]:.4f}" for k in HEADLINE if values.get(k) is not None)
            lines.append(f"  {split:5s} {shown}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from tfpipeline.training import RunFolder
    from tfpipeline.workflow import run_training

    run = None
    recipe = chosen_recipe(args)
    if args.resume:
        run = RunFolder.open(args.resume)
        config = resolve_run_config(args, base=_stored(run))
    else:
        config = resolve_run_config(args)
    if recipe is not None:
        print(f"recipe {recipe.name} v{recipe.version}: {recipe.purpose}")
    result = run_training(config, run=run, resume=run is not None, recipe=recipe.record() if recipe else None)
    report_training(result)
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from tfpipeline.crossval import run_cv

    recipe = chosen_recipe(args)
    config = resolve_run_config(args)
    result = run_cv(config, args.folds, out=args.out, recipe=recipe.record() if recipe else None)
    print(f"\n{args.folds}-fold cross-validation of {config.model.name} ({result.out_dir}):\n")
    print(result.markdown())
    mean, std = result.summary["mean"], result.summary["std"]
    for name in ("roc_auc", "accuracy"):
        if name in mean:
            print(f"{name}: {mean[name]:.4f} ± {std[name]:.4f}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from tfpipeline.recipes import list_recipes, load_recipe

    if args.name:
        recipe = load_recipe(args.name)
        print(f"{recipe.name} (version {recipe.version}): {recipe.purpose}")
        for key, value in recipe.expected.items():
            print(f"  expected {key}: {value}")
        print("options (the `--config` schema; flags override them):")
        for key, value in recipe.options.items():
            print(f"  {key}: {value}")
        return 0
    rows = [
        (r.name, f"v{r.version}", r.model, str(r.expected.get("result", "")), _seconds(r.expected), r.purpose)
        for r in list_recipes()
    ]
    from tabulate import tabulate

    print(tabulate(rows, headers=("recipe", "version", "model", "measured result", "time", "purpose")))
    print("\nuse: tfpipeline train --recipe NAME --data FOLDER [flags override the recipe]")
    return 0


def _seconds(expected: dict) -> str:
    seconds = expected.get("seconds")
    if seconds is None:
        return ""
    return f"{float(seconds) / 60:.0f} min" if float(seconds) >= 120 else f"{float(seconds):.0f} s"


def report_training(result) -> None:
    """Print where a finished run is and its headline numbers."""
    metrics = result.metrics
    print(f"\nrun folder: {result.run.path}")
    print(
        f"trained {len(result.history)} epoch(s) in {result.train_seconds:.1f}s"
        + (" (stopped early)" if result.stopped_early else "")
        + f"; best epoch {metrics.get('best_epoch')} by {metrics.get('monitor')}"
    )
    if result.rule.binary:
        print(f"decision {result.rule.describe()}")
    print(format_metrics(metrics))


def _stored(run) -> dict:
    from tfpipeline.config_io import load_yaml

    return load_yaml(run.config_file)


def register(commands) -> None:
    """Add `models` and `train` to the top-level subparsers."""
    from tfpipeline.cli import Parser

    models = commands.add_parser("models", help="list registered models; `models show NAME` for one")
    sub = models.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=Parser)
    show = sub.add_parser("show", help="print a model's layers and parameter counts")
    show.add_argument("name")
    show.add_argument("--image-size", type=parse_image_size, default=(224, 224))
    show.add_argument("--num-classes", type=int, default=2)
    show.add_argument("--grayscale", action="store_true")
    show.add_argument("--batchnorm", action="store_true")
    show.add_argument("--dropout", action="store_true")
    show.add_argument("--padding", choices=("valid", "same"), default="valid")
    show.add_argument("--weights", default="none", help="none (default here), imagenet or a file")
    show.set_defaults(func=cmd_models_show)
    models.set_defaults(func=cmd_models)

    cv = commands.add_parser(
        "cv",
        help="stratified k-fold cross-validation of a training configuration (mean ± std per fold)",
        argument_default=argparse.SUPPRESS,
        description="Train the configuration given by the usual `train` flags (or --recipe) once per fold "
        "of a stratified, seeded k-fold partition of train+val, and report each fold's validation metrics "
        "with their mean and standard deviation. The test split is never used.",
    )
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    cv.add_argument("--out", default=None, help="output folder (default RUN_DIR/cv-MODEL-TIME)")
    add_model_flags(cv)
    add_data_flags(cv)
    add_augment_flags(cv)
    add_train_flags(cv)
    cv.set_defaults(func=cmd_cv)

    recipes = commands.add_parser(
        "recipes",
        help="list the shipped training recipes with their measured results; `recipes NAME` shows one",
        description="Named training configurations with the accuracy and time we measured. Use one with "
        "`tfpipeline train --recipe NAME --data FOLDER`; any flag overrides the recipe.",
    )
    recipes.add_argument("name", nargs="?", help="show this recipe's options")
    recipes.set_defaults(func=cmd_recipes)

    train = commands.add_parser(
        "train",
        help="train a model into a run folder",
        argument_default=argparse.SUPPRESS,
        description="Train a registered model. Defaults reproduce the assessment: small_cnn, SGD lr 1e-3 "
        "momentum 0.9, batch 32, 224x224, binary cross-entropy, on the embedded 'faces' data.",
    )
    add_model_flags(train)
    add_data_flags(train)
    add_augment_flags(train)
    add_train_flags(train)
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder", default=None)
    train.set_defaults(func=cmd_train)
