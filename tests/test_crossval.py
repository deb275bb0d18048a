"""`tfpipeline cv`: one run per fold, a summary whose mean is the folds' mean, and an estimate that
never chooses its epoch on the held-out fold."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.config_io import load_yaml
from tfpipeline.crossval import last_epoch_only, run_cv
from tfpipeline.errors import UserError


def _config(folder, tmp_path, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=str(folder), image_size=(32, 32), batch_size=4, cache="none"),
        model=ModelConfig(name="small_cnn", filters=(4, 4, 8, 8), dense_units=(8, 8, 8), padding="same"),
        train=TrainConfig(epochs=2, lr=0.01, run_dir=str(tmp_path / "runs"), ood="none", **train),
    )


def test_best_epoch_and_early_stopping_are_replaced_by_the_last_epoch(class_folder, tmp_path):
    plain = _config(class_folder, tmp_path, checkpoint="last")
    assert last_epoch_only(plain) == (plain, "last epoch")
    chosen, why = last_epoch_only(_config(class_folder, tmp_path, checkpoint="best", early_stopping=1))
    assert chosen.train.checkpoint == "last" and chosen.train.early_stopping == 0
    assert "--checkpoint best" in why and "--early-stopping 1" in why and "held-out fold" in why


def test_every_fold_trains_on_the_rest_and_the_summary_is_their_mean(class_folder, tmp_path, capsys):
    config = _config(class_folder, tmp_path, checkpoint="best")
    result = run_cv(config, 2, out=tmp_path / "cv")
    assert "[cv] last epoch, not --checkpoint best" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "cv" / "folds.csv")
    assert table["fold"].tolist() == [1, 2] and table["val_images"].sum() == 21
    # 24 images: the default 12.5 % test split (3) is never touched, the other 21 held out once each
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["mean"]["roc_auc"] == pytest.approx(table["roc_auc"].mean())
    assert summary["std"]["accuracy"] == pytest.approx(table["accuracy"].std(ddof=1))
    assert summary["epoch_selection"].startswith("last epoch, not --checkpoint best")
    for run in table["run"]:
        assert load_yaml(f"{run}/config.yaml")["train"]["checkpoint"] == "last"
    assert "Each fold scored on its last epoch" in (result.out_dir / "summary.md").read_text()
    with pytest.raises(UserError, match="at least 2"):
        run_cv(config, 1)
