"""Training stage: run folder contents, metrics vs scikit-learn, thresholds, config handling."""

from __future__ import annotations

import json
from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import variables_created_in_functions
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from tfpipeline.cli import main
from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.data import load_data
from tfpipeline.decision import best_f1_threshold
from tfpipeline.evaluation.run_report import class_probabilities, predict_split, write_run_report
from tfpipeline.models import build_model
from tfpipeline.training import RunFolder, train
from tfpipeline.training.compile import compile_model
from tfpipeline.training.fit import class_weights
from tfpipeline.training.metrics import MacroPrecision, MacroRecall

TINY = ["--image-size", "32", "--padding", "same", "--batch-size", "8"]


def tiny_config(data, **train_overrides) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=str(data), image_size=(32, 32), batch_size=8),
        model=ModelConfig(name="small_cnn", padding="same"),
        train=TrainConfig(**{"epochs": 2, "run_dir": str(data.parent / "runs"), **train_overrides}),
    )


def only_run(parent) -> RunFolder:
    runs = sorted(p for p in parent.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return RunFolder.open(runs[0])


@pytest.mark.parametrize(
    ("num_classes", "options"), [(2, {}), (3, {"optimizer": "adamw", "ema": 0.9, "schedule": "onecycle"})]
)
def test_the_first_train_step_creates_no_variables_so_it_is_traced_once(num_classes, options):
    # A tf.function whose first trace creates variables (optimizer slots, metric state) is traced
    # a second time: over a second per run on 2 cores. compile_model creates them beforehand.
    model = build_model(
        ModelConfig(name="small_cnn", padding="same", filters=(4, 4, 8, 8)), (16, 16, 3), num_classes
    )
    threshold = 0.5 if num_classes == 2 else None
    compile_model(
        model, TrainConfig(epochs=1, **options), num_classes, steps_per_epoch=2, threshold=threshold
    )
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    targets = (
        labels[:, None].astype("float32") if num_classes == 2 else np.eye(num_classes)[labels % num_classes]
    )
    images = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    with variables_created_in_functions() as created:
        history = model.fit(images, targets, batch_size=4, epochs=1, verbose=0)
    assert created == []
    assert 0.0 <= history.history["f1"][0] <= 1.0  # the pre-created F1 state counted this epoch


def test_cli_train_writes_every_artifact(image_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["train", "--data", str(image_folder), "--epochs", "2", "--run-dir", str(runs), *TINY])
    assert code == 0
    out = capsys.readouterr().out
    run = only_run(runs)
    assert f"run folder: {run.path}" in out
    assert "val " in out and "test " in out and "roc_auc=" in out

    for name in ("config.yaml", "run.json", "classes.json", "history.csv", "metrics.json"):
        assert (run.path / name).is_file(), name
    assert run.best_checkpoint.is_file() and run.last_checkpoint.is_file()
    split_files = {p.name for p in (run.path / "splits").iterdir()}
    assert split_files == {"train.csv", "val.csv", "test.csv"}
    train_rows = pd.read_csv(run.path / "splits" / "train.csv")
    assert len(train_rows) == 16 and set(train_rows["class"]) == {"blue", "red"}

    history = pd.read_csv(run.history_file)
    assert len(history) == 2
    for metric in ("loss", "accuracy", "precision", "recall", "f1", "auc", "pr_auc"):
        assert metric in history and f"val_{metric}" in history
    assert "epoch_seconds" in history and "learning_rate" in history

    plots = {p.name for p in run.plots_dir.iterdir()}
    for split in ("val", "test"):
        assert {f"roc_{split}.png", f"pr_{split}.png", f"confusion_{split}.png"} <= plots
    assert "learning_curves.png" in plots
    # TensorBoard: scalars for train/validation and per-epoch figure images.
    for sub in ("train", "validation", "validation_figures"):
        assert any((run.tensorboard_dir / sub).glob("events.out.tfevents.*")), sub

    metrics = json.loads(run.metrics_file.read_text())
    assert set(metrics) >= {"val", "test", "threshold"}
    assert metrics["threshold"] == {"policy": "0.5", "value": 0.5, "positive_class": "red"}
    for split in ("val", "test"):  # one row per image, in the split's order, agreeing with metrics.json
        scored = pd.read_csv(run.path / f"predictions_{split}.csv")
        listed = pd.read_csv(run.path / "splits" / f"{split}.csv")
        assert scored["path"].tolist() == listed["path"].tolist()
        assert scored["label"].tolist() == listed["class"].tolist()
        np.testing.assert_allclose(scored["p_blue"] + scored["p_red"], 1.0, atol=1e-6)
        assert (scored["predicted"] == np.where(scored["p_red"] >= 0.5, "red", "blue")).all()
        accuracy = (scored["predicted"] == scored["label"]).mean()
        assert accuracy == pytest.approx(metrics[split]["accuracy"])
    info = json.loads(run.run_file.read_text())
    assert info["status"] == "finished" and info["epochs_run"] == 2
    assert info["data"]["counts"]["train"] == {"blue": 8, "red": 8}


def test_epoch_figures_0_skips_the_per_epoch_figures_but_not_the_final_plots(image_folder):
    from tfpipeline.workflow import run_training

    result = run_training(tiny_config(image_folder, epochs=1, epoch_figures=0, ood="none"))
    assert not (result.run.tensorboard_dir / "validation_figures").exists()
    assert (result.run.plots_dir / "roc_val.png").is_file()
    assert result.run.read_config().train.epoch_figures == 0


def test_epoch_metrics_agree_with_sklearn(image_folder):
    """The last epoch's val_* columns equal scikit-learn on the last checkpoint's predictions."""
    result = train(tiny_config(image_folder, epochs=2))
    last = keras.models.load_model(result.run.last_checkpoint)
    bundle = load_data(result.config.data, scaling=result.scaling)
    y_true = bundle.splits["val"].labels
    scores = last.predict(bundle.val, verbose=0).reshape(-1)
    y_pred = (scores >= 0.5).astype(int)
    row = result.history.iloc[-1]
    assert row["val_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-6)
    assert row["val_precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0), abs=1e-6)
    assert row["val_recall"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0), abs=1e-6)
    assert row["val_f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0), abs=1e-5)
    if len(set(y_true)) == 2:
        # Keras' AUC integrates over 500 fixed thresholds: close to, not exactly, sklearn's.
        assert row["val_auc"] == pytest.approx(roc_auc_score(y_true, scores), abs=0.02)


def test_prior_and_tuned_thresholds(image_folder, make_images):
    # Unbalance train so the prior differs from 0.5: 8 blue, 14 red -> prior of red = 14/22.
    make_images(image_folder / "train" / "red", 6, "red", start=100)
    prior_run = train(tiny_config(image_folder, threshold="prior", epochs=1))
    info = prior_run.bundle.info
    assert info.train_prior == pytest.approx(14 / 22)
    preds = {
        "val": predict_split(
            prior_run.model, prior_run.bundle.val, prior_run.bundle.splits["val"].labels, 2, 1
        )
    }
    metrics = write_run_report(prior_run.run, prior_run.history, preds, info, "prior")
    assert metrics["threshold"]["value"] == pytest.approx(14 / 22)
    assert metrics["val"]["threshold"] == pytest.approx(14 / 22)

    tuned = write_run_report(prior_run.run, prior_run.history, preds, info, "tuned")
    expected = best_f1_threshold(preds["val"].y_true == 1, preds["val"].probs[:, 1])
    assert tuned["threshold"]["value"] == pytest.approx(expected)


def test_positive_class_first_flips_the_sigmoid(image_folder):
    config = tiny_config(image_folder, epochs=1)
    config = replace(config, data=replace(config.data, positive_class="blue"))
    result = train(config)
    assert result.bundle.info.positive_index == 0
    raw = result.model.predict(result.bundle.val, verbose=0)
    probs = class_probabilities(raw, 2, 0)
    # The single sigmoid unit scores "blue", which is column 0 of the class-ordered probabilities.
    np.testing.assert_allclose(probs[:, 0], raw.reshape(-1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_macro_precision_recall_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    precision, recall = MacroPrecision(4), MacroRecall(4)
    onehot = np.eye(4)[y]
    for metric in (precision, recall):
        metric.update_state(onehot[:120], probs[:120])
        metric.update_state(onehot[120:], probs[120:])
    assert float(precision.result()) == pytest.approx(
        precision_score(y, pred, average="macro", zero_division=0), abs=1e-6
    )
    assert float(recall.result()) == pytest.approx(recall_score(y, pred, average="macro"), abs=1e-6)


def test_multiclass_training_on_digits(tmp_path):
    config = RunConfig(
        data=DataConfig(data="digits", image_size=(16, 16), batch_size=64, color_mode="grayscale"),
        model=ModelConfig(name="small_cnn", padding="same"),
        train=TrainConfig(epochs=1, optimizer="adam", run_dir=str(tmp_path)),
    )
    result = train(config)
    columns = set(result.history.columns)
    assert {
        "val_accuracy",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_top3_accuracy",
        "val_top5_accuracy",
    } <= columns
    assert result.model.output_shape == (None, 10)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})


def test_run_config_round_trips_through_train_config_flag(image_folder, tmp_path):
    result = train(tiny_config(image_folder, epochs=1, lr=0.02))
    from tfpipeline.cli import build_parser
    from tfpipeline.flags import resolve_run_config

    args = build_parser().parse_args(["train", "--config", str(result.run.config_file)])
    assert resolve_run_config(args) == result.config


class _StopAfter(keras.callbacks.Callback):
    """Simulates Ctrl-C at the end of epoch `epoch` (after checkpoints and logs are written)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_interruption_equals_uninterrupted_run(image_folder, tmp_path):
    config = replace(
        tiny_config(image_folder, epochs=3, deterministic=True, run_dir=str(tmp_path / "a")),
        model=ModelConfig(name="small_cnn", padding="same", batchnorm=True),
    )
    reference = train(config, verbose=0)

    interrupted_config = replace(config, train=replace(config.train, run_dir=str(tmp_path / "b")))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted_config, extra_callbacks=[lambda bundle, run, prepared: _StopAfter(0)], verbose=0)
    run = only_run(tmp_path / "b")
    assert json.loads(run.run_file.read_text())["status"] == "interrupted"
    assert len(pd.read_csv(run.history_file)) == 1

    resumed = train(interrupted_config, run=run, resume=True, verbose=0)
    assert len(resumed.history) == 3
    columns = [c for c in reference.history.columns if c not in ("epoch_seconds",)]
    pd.testing.assert_frame_equal(
        resumed.history[columns].reset_index(drop=True),
        reference.history[columns].reset_index(drop=True),
        check_exact=False,
        rtol=1e-5,
    )


def test_a_relative_data_folder_is_recorded_absolute_so_the_run_works_from_anywhere(
    image_folder, tmp_path, monkeypatch
):
    from tfpipeline.config_io import load_yaml
    from tfpipeline.evaluation.run_context import open_run

    monkeypatch.chdir(image_folder.parent)
    config = tiny_config(image_folder, epochs=1, ood="none", run_dir=str(tmp_path / "runs"))
    train(replace(config, data=replace(config.data, data=image_folder.name)), verbose=0)
    run = only_run(tmp_path / "runs")
    recorded = load_yaml(run.path / "config.yaml")["data"]["data"]
    assert recorded == str(image_folder.resolve())
    assert all(
        pd.read_csv(f).path.str.startswith(recorded).all() for f in (run.path / "splits").glob("*.csv")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # evaluate, predict and --resume rebuild the data from here
    assert open_run(run.path).config.data.data == recorded
    assert load_data(open_run(run.path).config.data, scaling="unit").info.class_names == ("blue", "red")


def test_a_bfloat16_run_leaves_later_models_in_float32(tiny_run):
    """Keras' precision policy is process-wide: a run sets it for its own model only."""
    run = tiny_run("--precision", "bfloat16")
    recorded = json.loads((run / "run.json").read_text())["precision"]
    assert recorded["policy"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    later = build_model(ModelConfig(padding="same"), (32, 32, 3), 2)
    assert {layer.dtype_policy.name for layer in later.layers} == {"float32"}


def test_a_bfloat16_run_hands_over_a_float32_model_that_its_report_describes(image_folder, tmp_path):
    """Mixed precision speeds up training only: the model a run returns, and that its report
    scores, computes in float32 with the trained weights."""
    from tfpipeline.workflow import run_training

    config = RunConfig(
        data=DataConfig(data=str(image_folder), image_size=(32, 32), batch_size=4),
        model=ModelConfig(padding="same"),
        train=TrainConfig(epochs=1, precision="bfloat16", run_dir=str(tmp_path)),
    )
    result = run_training(config, verbose=0)
    trained = keras.models.load_model(result.run.model_checkpoint(), compile=False)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in trained.layers}
    assert {layer.dtype_policy.name for layer in result.model._flatten_layers()} == {"float32"}
    # The report's validation probabilities are the float32 model's, not the bfloat16 one's.
    reported = pd.read_csv(result.run.path / "predictions_val.csv")
    probs = class_probabilities(
        result.model.predict(result.bundle.val, verbose=0), 2, result.bundle.info.positive_index
    )
    np.testing.assert_allclose(reported["p_red"], probs[:, 1], atol=1e-6)
