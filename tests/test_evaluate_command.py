"""`tfpipeline evaluate` on a tiny trained run: every artefact, metrics equal to scikit-learn's on
the same predictions, the run's own threshold, a short summary, Grad-CAM for small_cnn and
resnet50_head, and clean user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from tfpipeline.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARTEFACTS = (
    "classification_report.txt",
    "metrics.json",
    "predictions.csv",
    "confusion_matrix.png",
    "roc.png",
    "precision_recall.png",
    "reliability.png",
    "top_losses.png",
    "gradcam.png",
    "summary.md",
)
COUNTS = (("train", 12), ("val", 4), ("test", 4))  # images per class


@pytest.fixture(scope="module")
def binary_run(tiny_run) -> Path:
    """One small_cnn run whose positive class is index 0 (`blue`), to exercise the mapping."""
    return tiny_run("--positive-class", "blue", "--threshold", "0.4", counts=COUNTS)


@pytest.fixture(scope="module")
def run_data(tiny_run, binary_run) -> Path:
    """The split folder `binary_run` was trained on."""
    return tiny_run.data(binary_run)


def _predictions(run: Path, split: str):
    """The run's checkpoint over the training pipeline's split, as class probabilities (computed
    in float32, whatever precision trained it: as every report and export of a run)."""
    import keras

    from tfpipeline.data import load_data
    from tfpipeline.evaluation.run_report import class_probabilities
    from tfpipeline.models.precision import as_float32
    from tfpipeline.training import RunFolder

    folder = RunFolder.open(run)
    config = folder.read_config()
    scaling = json.loads(folder.run_file.read_text())["scaling"]
    bundle = load_data(config.data, scaling=scaling)
    model = as_float32(keras.models.load_model(folder.best_checkpoint, compile=False))
    dataset = bundle.test if split == "test" else bundle.val
    probs = class_probabilities(model.predict(dataset, verbose=0), 2, bundle.info.positive_index)
    return bundle.splits[split].labels, probs, bundle.info.positive_index


def test_evaluate_writes_every_artefact_with_sklearn_metrics(binary_run, capsys):
    assert main(["evaluate", str(binary_run), "--gradcam", "4", "--top-losses", "4"]) == 0
    out = capsys.readouterr().out
    folder = binary_run / "evaluation" / "test"
    for name in ARTEFACTS:
        path = folder / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC
    assert "precision" in out and "blue" in out and "red" in out and str(folder) in out

    metrics = json.loads((folder / "metrics.json").read_text())
    run_metrics = json.loads((binary_run / "metrics.json").read_text())
    threshold = run_metrics["threshold"]["value"]
    assert threshold == pytest.approx(0.4)
    assert metrics["threshold"] == pytest.approx(threshold)  # the run's, not a new one
    assert metrics["positive_class"] == "blue" and metrics["split"] == "test"

    y_true, probs, positive = _predictions(binary_run, "test")
    assert positive == 0
    y_pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    assert metrics["num_samples"] == len(y_true) == 8
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics["precision"] == pytest.approx(
        skm.precision_score(y_true, y_pred, pos_label=0, zero_division=0)
    )
    assert metrics["recall"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0, zero_division=0))
    assert metrics["f1"] == pytest.approx(skm.f1_score(y_true, y_pred, pos_label=0, zero_division=0))
    assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true == 0, probs[:, 0]), abs=1e-6)
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist()
    # the test metrics training reported come from the same checkpoint and threshold
    assert metrics["accuracy"] == pytest.approx(run_metrics["test"]["accuracy"])
    assert 0.0 <= metrics["ece"] <= 1.0 and metrics["calibration"]["ece"] == metrics["ece"]
    assert sum(b["count"] for b in metrics["calibration"]["table"]) == len(y_true)
    scored = pd.read_csv(folder / "predictions.csv")  # per image, in the split's file order
    assert scored["path"].tolist() == pd.read_csv(binary_run / "splits" / "test.csv")["path"].tolist()
    np.testing.assert_allclose(scored["p_blue"], probs[:, 0], atol=1e-6)
    assert scored["predicted"].tolist() == [("blue", "red")[i] for i in y_pred]

    report = (folder / "classification_report.txt").read_text()
    assert "blue" in report and "red" in report and "accuracy" in report
    summary = (folder / "summary.md").read_text()
    assert len(summary.split()) <= 500
    assert f"{metrics['accuracy']:.3f}" in summary


def test_evaluate_val_split_and_out_folder(binary_run, tmp_path):
    out = tmp_path / "eval_out"
    code = main(["evaluate", str(binary_run), "--split", "val", "--out", str(out), "--gradcam", "0"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_samples"] == 8
    assert not (out / "gradcam.png").exists() and (out / "top_losses.png").is_file()
    run_val = json.loads((binary_run / "metrics.json").read_text())["val"]
    for key in ("accuracy", "f1", "roc_auc"):
        assert metrics[key] == pytest.approx(run_val[key], abs=1e-9)


def test_evaluate_missing_split_is_a_user_error(binary_run, run_data, tmp_path, capsys):
    no_test = tmp_path / "no_test"
    shutil.copytree(run_data / "train", no_test / "train")
    shutil.copytree(run_data / "val", no_test / "val")
    code = main(
        ["evaluate", str(binary_run), "--data", str(no_test), "--split", "test", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "no test split" in err and "Traceback" not in err


def test_evaluate_split_all_scores_every_file_of_an_external_folder(binary_run, run_data, tmp_path, capsys):
    # A class-only folder (what an out-of-domain set usually is): 3 + 5 images, too few to split.
    external = tmp_path / "other_faces"
    source = run_data / "test"
    for name, count in (("blue", 3), ("red", 5)):
        (external / name).mkdir(parents=True)
        for i, path in enumerate(sorted((source / name).iterdir())[:count] * 2):
            if i < count:
                shutil.copy(path, external / name / f"{i}{path.suffix}")
    code = main(["evaluate", str(binary_run), "--data", str(external), "--gradcam", "2", "--top-losses", "2"])
    assert code == 0, capsys.readouterr().err
    out = binary_run / "evaluation" / "other_faces-all"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["num_samples"] == 8 and metrics["external_data"]
    assert metrics["support"] == {"blue": 3, "red": 5}
    summary = (out / "summary.md").read_text()
    assert f"Evaluated on external data `{external}` (all: 8 images" in summary
    assert "train: 24 images" in summary  # the run's own training data, not the external folder's


def test_evaluate_split_all_refuses_other_classes(binary_run, run_data, tmp_path, capsys):
    external = tmp_path / "three"
    for name in ("blue", "green", "red"):
        (external / name).mkdir(parents=True)
        shutil.copy(next((run_data / "val" / "red").iterdir()), external / name / "a.png")
    assert main(["evaluate", str(binary_run), "--data", str(external), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert "holds classes blue, green, red but the model knows blue, red" in err and "Traceback" not in err


def test_evaluate_not_a_run_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(tmp_path) in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path), "--split", "train"]) == 2


def test_gradcam_small_cnn_run_model(binary_run, run_data):
    import keras

    from tfpipeline.data.decode import unscale_pixels
    from tfpipeline.evaluation.figures import gradcam_class_targets
    from tfpipeline.evaluation.gradcam import gradcam_heatmaps
    from tfpipeline.evaluation.run_context import open_run

    model = keras.models.load_model(binary_run / "checkpoints" / "best.keras", compile=False)
    files = [sorted((run_data / "test" / cls).glob("*.png"))[0] for cls in ("blue", "red")]  # one per class
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    inputs = images.astype(np.float32) / 255.0  # the run's `unit` scaling
    assert open_run(binary_run).scaling == "unit"
    assert np.array_equal(unscale_pixels(inputs, "unit"), images)
    predicted = np.where(model.predict(inputs, verbose=0)[:, 0] >= 0.5, 0, 1)  # sigmoid scores blue (0)
    heatmaps = gradcam_heatmaps(model, inputs, gradcam_class_targets(predicted, 0))
    assert heatmaps.shape == (2, 32, 32)
    assert heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1.0)
    other = gradcam_heatmaps(model, inputs, gradcam_class_targets(1 - predicted, 0))
    assert_evidence_for_one_class_or_the_other(heatmaps, other)


def assert_evidence_for_one_class_or_the_other(explained: np.ndarray, other_class: np.ndarray) -> None:
    """Each image's map may be empty (Grad-CAM keeps only positive evidence, and a 1-epoch model's
    evidence for its own prediction can be negative everywhere), but then the other class's is not:
    for a sigmoid unit the two classes' channel weights differ only by a negative factor."""
    assert np.all(np.maximum(explained.std(axis=(1, 2)), other_class.std(axis=(1, 2))) > 0)
    assert explained.max() > 0


def test_gradcam_resnet50_head_untrained():
    from tfpipeline.config import ModelConfig
    from tfpipeline.evaluation.gradcam import find_last_conv_layer, gradcam_heatmaps
    from tfpipeline.models import build_model

    model = build_model(ModelConfig(name="resnet50_head", weights="none"), (64, 64, 3), 2)
    assert find_last_conv_layer(model)[-1].startswith("conv5")
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    heatmaps = gradcam_heatmaps(model, images, [1, 0])
    assert heatmaps.shape == (2, 64, 64)
    assert_evidence_for_one_class_or_the_other(heatmaps, gradcam_heatmaps(model, images, [0, 1]))


def test_balanced_sample_alternates_classes():
    from tfpipeline.evaluation.figures import balanced_sample

    y = np.array([0] * 10 + [1] * 3)
    chosen = balanced_sample(y, 6, seed=1)
    assert y[chosen].tolist() == [0, 1, 0, 1, 0, 1] and len(set(chosen.tolist())) == 6
    assert sorted(y[balanced_sample(y, 20, seed=1)].tolist()) == sorted(y.tolist())
    assert np.array_equal(balanced_sample(y, 6, seed=1), chosen)


def test_gradcam_class_targets_follow_the_positive_class():
    from tfpipeline.evaluation.figures import gradcam_class_targets

    assert gradcam_class_targets(np.array([0, 1, 1]), 0).tolist() == [1, 0, 0]
    assert gradcam_class_targets(np.array([0, 1, 1]), 1).tolist() == [0, 1, 1]
    assert gradcam_class_targets(np.array([2, 0]), None).tolist() == [2, 0]


@pytest.mark.slow
def test_evaluate_resnet50_head_run(tiny_run):
    # resnet50_head ignores --padding; sgd at lr 1e-3 (train's defaults) as this test always used
    flags = ("--model", "resnet50_head", "--weights", "none", "--image-size", "64")
    flags += ("--optimizer", "sgd", "--lr", "0.001")
    run = tiny_run(*flags, counts=(("train", 4), ("val", 2), ("test", 2)))
    assert main(["evaluate", str(run), "--gradcam", "2", "--top-losses", "2"]) == 0
    assert (run / "evaluation" / "test" / "gradcam.png").is_file()
