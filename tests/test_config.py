"""Configuration: strict dataclasses, the one value converter, YAML/flag layering, bad options."""

from __future__ import annotations

import pytest
import yaml

from tfpipeline.cli import main
from tfpipeline.config import DataConfig, ModelConfig, RunConfig
from tfpipeline.config_io import coerce_scalar, from_dict
from tfpipeline.errors import UserError
from tfpipeline.tuning.hparams import apply_values


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("Yes", True), ("1", True), ("false", False), ("NO", False), ("0", False), (True, True)],
)
def test_booleans_read_the_same_in_configs_and_search_spaces(text, expected):
    assert coerce_scalar(text, bool, "x") is expected
    assert from_dict(ModelConfig, {"batchnorm": text}).batchnorm is expected
    assert apply_values(RunConfig(), {"batchnorm": text}).model.batchnorm is expected


@pytest.mark.parametrize(
    ("value", "kind"), [("maybe", bool), (2.5, int), (True, int), (True, float), ("x", float)]
)
def test_bad_values_name_where_they_come_from(value, kind):
    with pytest.raises(UserError, match=r"^where: expected"):
        coerce_scalar(value, kind, "where")


def test_integral_floats_are_ints_and_lists_become_tuples():
    config = from_dict(DataConfig, {"batch_size": 1e3, "image_size": [64, 48], "classes": "a,b"})
    assert config.batch_size == 1000 and config.image_size == (64, 48) and config.classes == ("a", "b")


def test_config_file_and_flag_precedence(image_folder, tmp_path):
    from tfpipeline.cli import build_parser
    from tfpipeline.flags import resolve_run_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        yaml.safe_dump({"lr": 0.05, "batchnorm": True, "flip": True, "train": {"epochs": 7}})
    )
    args = build_parser().parse_args(["train", "--config", str(config_file), "--lr", "0.01"])
    config = resolve_run_config(args)
    assert config.train.lr == 0.01  # flag beats file
    assert config.train.epochs == 7 and config.model.batchnorm and config.data.augment.flip


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("lr: 0.01\nlearning_rat: 3\n")
    assert main(["train", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and str(config_file) in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--threshold", "1.5"], "--threshold"),
        (["--model", "nope"], "nope"),
        (["--epochs", "0"], "--epochs"),
        (["--epoch-figures", "-1"], "--epoch-figures"),
    ],
)
def test_bad_train_options_exit_2(flags, message, capsys):
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and "Traceback" not in err
