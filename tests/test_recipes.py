"""Recipes: shipped, listed, layered under --config and flags, recorded in the run folder."""

from __future__ import annotations

import json

import pytest

from tfpipeline.cli import main
from tfpipeline.errors import UserError
from tfpipeline.recipes import build_config, list_recipes, load_recipe


def test_every_shipped_recipe_loads_and_builds_a_config():
    recipes = list_recipes()
    names = [r.name for r in recipes]
    assert {"assessment", "cifar10", "fake_faces"} <= set(names) and names == sorted(names)
    for recipe in recipes:
        assert (
            recipe.version >= 1
            and recipe.purpose
            and {"result", "seconds", "machine"} <= set(recipe.expected)
        )
        config = build_config(recipe.name)
        assert config.model.name == recipe.model


def test_assessment_recipe_is_the_original_settings():
    config = build_config("assessment")
    assert (config.model.name, config.train.optimizer, config.train.lr, config.train.momentum) == (
        "small_cnn", "sgd", 0.001, 0.9,
    )  # fmt: skip
    assert config.data.batch_size == 32 and config.data.image_size == (224, 224) and config.train.epochs == 10
    assert config.train.threshold == "prior"


def test_flags_override_the_recipe_and_unknown_names_are_clear(capsys):
    from tfpipeline.cli import build_parser
    from tfpipeline.flags import resolve_run_config

    args = build_parser().parse_args(["train", "--recipe", "cifar10", "--epochs", "2", "--lr", "0.123"])
    config = resolve_run_config(args)
    recipe = build_config("cifar10")
    assert config.train.epochs == 2 and config.train.lr == 0.123
    assert config.model == recipe.model and config.train.schedule == recipe.train.schedule
    # A switch the recipe turns on can be turned off from the command line (ablations need it).
    assert recipe.data.augment.flip and recipe.train.nesterov
    args = build_parser().parse_args(["train", "--recipe", "cifar10", "--no-flip", "--no-nesterov"])
    switched_off = resolve_run_config(args)
    assert not switched_off.data.augment.flip and not switched_off.train.nesterov
    assert switched_off.data.augment.shift == recipe.data.augment.shift
    assert main(["train", "--recipe", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'nope'" in err and "assessment" in err and "cifar10" in err
    with pytest.raises(UserError, match="unknown recipe"):
        load_recipe("nope")


def test_recipes_command_lists_results_and_shows_one(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for recipe in list_recipes():
        assert recipe.name in out and recipe.model in out
    assert main(["recipes", "cifar10"]) == 0
    assert "expected result" in capsys.readouterr().out


def test_a_run_records_its_recipe_and_refuses_a_too_small_image_early(image_folder, tmp_path, capsys):
    argv = [
        "train",
        "--recipe",
        "assessment",
        "--data",
        str(image_folder),
        "--epochs",
        "1",
        "--image-size",
        "32",
    ]
    argv += ["--padding", "same", "--batch-size", "8", "--run-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["recipe"] == {"name": "assessment", "version": 1}
    # The cifar10 recipe's fast_resnet needs 16 px; refused before any data is read.
    assert main(["train", "--recipe", "cifar10", "--data", "/no/such/folder", "--image-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "below fast_resnet's minimum of 16" in err and "/no/such/folder" not in err
