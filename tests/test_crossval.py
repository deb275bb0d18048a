"""`tfpipeline cv`: one run per fold, a summary whose mean is the folds' mean, and an estimate that
never chooses its epoch on the held-out fold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.config_io import load_yaml
from tfpipeline.crossval import crossfit_threshold_metrics, last_epoch_only, pooled_breakdown, run_cv
from tfpipeline.decision import DecisionRule, best_accuracy_threshold, best_f1_threshold
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


def test_fakes_named_like_ciplab_are_counted_per_difficulty_over_all_folds(tmp_path):
    rng = np.random.default_rng(5)
    grades = ("easy", "mid", "hard")
    for cls in ("fake", "real"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            name = f"{grades[i % 3]}_{i}_{i % 2}01{(i + 1) % 2}.jpg" if cls == "fake" else f"real_{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / name
            )
    config = _config(tmp_path / "data", tmp_path)
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, positive_class="fake"),
        train=dataclasses.replace(config.train, epochs=1),
    )
    result = run_cv(config, 2, out=tmp_path / "cv")
    held_out_fakes = sum(
        (pd.read_csv(f"{run}/splits/val.csv")["path"].str.contains("/fake/")).sum()
        for run in result.table["run"]
    )
    pooled = result.summary["breakdown"]["difficulty"]
    assert sum(row["count"] for row in pooled.values()) == held_out_fakes  # each fake judged once
    for row in pooled.values():
        assert 0 <= row["detected"] <= row["count"] and row["recall"] == pytest.approx(
            row["detected"] / row["count"]
        )
    fold_counts = [
        json.loads(Path(run, "metrics.json").read_text())["val"]["breakdown"]["difficulty"]["hard"]["count"]
        for run in result.table["run"]
    ]
    assert sum(fold_counts) == pooled["hard"]["count"]
    assert "| fakes by difficulty (all folds) |" in (tmp_path / "cv" / "summary.md").read_text()


def test_pooled_breakdown_sums_counts_and_averages_fold_aucs():
    def fold(count, detected, auc):
        row = {"count": count, "detected": detected, "recall": None, "auc": auc}
        return {"difficulty": {"easy": row}, "region": {"nose": row}}

    pooled = pooled_breakdown([fold(4, 1, 0.6), fold(6, 5, 0.8), fold(0, 0, None)])
    easy = pooled["difficulty"]["easy"]
    assert (easy["count"], easy["detected"], easy["recall"]) == (10, 6, 0.6)
    assert easy["auc_mean"] == pytest.approx(0.7) and easy["auc_std"] == pytest.approx(
        np.std([0.6, 0.8], ddof=1)
    )


def _held_out(seed: int, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(["fake", "real"])[rng.integers(0, 2, n)]
    p_fake = np.clip(np.where(labels == "fake", 0.45, 0.25) + rng.normal(0, 0.15, n), 0.001, 0.999)
    return pd.DataFrame({"label": labels, "p_fake": p_fake, "p_real": 1 - p_fake})


@pytest.mark.parametrize(
    ("policy", "best_threshold"), [("tuned", best_f1_threshold), ("accuracy", best_accuracy_threshold)]
)
def test_a_validation_tuned_threshold_is_cross_fitted_from_the_other_folds(policy, best_threshold):
    tables = [_held_out(seed) for seed in range(3)]
    tuned = DecisionRule.for_classes(policy, ["fake", "real"], "fake")
    held_out = [(dataclasses.replace(tuned, value=0.99), table) for table in tables]  # own values unused
    rows = crossfit_threshold_metrics(held_out, ["fake", "real"])
    assert len(rows) == len(tables)
    for k, row in enumerate(rows):
        others = pd.concat([t for j, t in enumerate(tables) if j != k])
        expected = best_threshold((others["label"] == "fake").to_numpy(), others["p_fake"].to_numpy())
        assert row["threshold_crossfit"] == pytest.approx(expected)
        flagged = tables[k]["p_fake"] >= expected
        assert row["accuracy_crossfit"] == pytest.approx((flagged == (tables[k]["label"] == "fake")).mean())
        assert row["f1_crossfit"] == pytest.approx(skm.f1_score(tables[k]["label"] == "fake", flagged))
    # A fixed number or the training prior is not chosen on the held-out fold: nothing to redo.
    for policy in ("0.3", "prior"):
        rule = DecisionRule.for_classes(policy, ["fake", "real"], "fake")
        assert crossfit_threshold_metrics([(rule, table) for table in tables], ["fake", "real"]) == []


def test_cv_with_a_tuned_threshold_reports_the_cross_fitted_columns(class_folder, tmp_path):
    result = run_cv(_config(class_folder, tmp_path, threshold="tuned"), 2, out=tmp_path / "cv")
    table = pd.read_csv(tmp_path / "cv" / "folds.csv")
    assert {"threshold_crossfit", "accuracy_crossfit", "f1_crossfit"} <= set(table)
    assert result.summary["mean"]["accuracy_crossfit"] == pytest.approx(table["accuracy_crossfit"].mean())
    assert "chosen on the other folds' held-out predictions" in (result.out_dir / "summary.md").read_text()
    for run in table["run"]:  # the fold's predictions file holds exactly its held-out images
        assert len(pd.read_csv(f"{run}/predictions_val.csv")) == len(pd.read_csv(f"{run}/splits/val.csv"))
