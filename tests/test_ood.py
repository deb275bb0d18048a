"""Out-of-domain detection (tfpipeline.ood): the maths against numpy references, calibration,
every registered model's embedding, the detector a training run fits, `ood fit|show|compare`,
`predict` and `evaluate --ood-data` columns, and exported `ood_score` equal to the run's own.

Runs are the session's `tiny_run()` (1-epoch small_cnn, 32x32) and `export_case(...)`; tests that
refit a detector do it on a copy of the run folder.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import EXPORT_TOLERANCE, variables_created_in_functions, write_split_folder

from tfpipeline.cli import main
from tfpipeline.config import ModelConfig, TrainConfig
from tfpipeline.errors import UserError
from tfpipeline.ood.autoencoder import train_autoencoder
from tfpipeline.ood.detectors import calibrate, fit_mahalanobis, mahalanobis_reference, score_views
from tfpipeline.ood.views import ViewLayout

SCORE_RTOL = 1e-5


def _views(embeddings: np.ndarray, units: int = 1) -> tuple[np.ndarray, ViewLayout]:
    output = np.full((len(embeddings), units), 0.5, np.float32)
    layout = ViewLayout(units=units, embedding=embeddings.shape[1], head=0, embedding_layer="dense3")
    return np.concatenate([output, embeddings], axis=1).astype(np.float32), layout


def _copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.parent.name / run.name))


def _ood_folder(root: Path) -> Path:
    """Out-of-domain images in both layouts at once: flat files and a class subfolder."""
    write_split_folder(root / "nested", counts=(("any", 3),), classes=("green",))
    for path in list((root / "nested" / "any" / "green").iterdir())[:2]:
        shutil.copy(path, root / f"flat_{path.name}")
    return root


# --------------------------------------------------------------------------- maths


def test_mahalanobis_matches_numpy_reference():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(120, 16)) * rng.uniform(0.2, 3.0, 16) + 2.0
    labels = rng.integers(0, 3, 120)
    arrays, facts = fit_mahalanobis(embeddings, labels)
    assert facts["classes"] == 3 and facts["dims"] == 16 and 0.0 <= facts["shrinkage"] <= 1.0
    precision = arrays["whitener"].astype(np.float64) @ arrays["whitener"].T.astype(np.float64)
    queries = rng.normal(size=(40, 16)) * 2.0
    views, layout = _views(queries.astype(np.float32))
    scores = score_views("mahalanobis", tf.constant(views), layout, arrays).numpy()
    expected = mahalanobis_reference(queries.astype(np.float32), arrays["means"], precision)
    np.testing.assert_allclose(scores, expected, rtol=SCORE_RTOL)
    # The precision is the inverse of the Ledoit-Wolf covariance of the class-centred embeddings.
    from sklearn.covariance import LedoitWolf

    means = np.stack([embeddings[labels == k].mean(0) for k in range(3)])
    shrunk = LedoitWolf(assume_centered=True).fit(embeddings - means[labels]).covariance_
    np.testing.assert_allclose(precision @ shrunk, np.eye(16), atol=1e-4)


def test_fewer_embeddings_than_dimensions_shrink_instead_of_failing():
    rng = np.random.default_rng(1)
    embeddings = np.abs(rng.normal(size=(6, 64)))
    embeddings[:, :10] = 0.0  # dead ReLU units: zero variance
    arrays, facts = fit_mahalanobis(embeddings, np.array([0, 0, 0, 1, 1, 1]))
    assert facts["shrinkage"] > 0
    views, layout = _views(np.abs(rng.normal(size=(5, 64))).astype(np.float32))
    scores = score_views("mahalanobis", tf.constant(views), layout, arrays).numpy()
    assert np.all(np.isfinite(scores)) and np.all(scores > 0)
    single, _ = fit_mahalanobis(embeddings[:1], np.array([0]))  # one embedding: still no traceback
    assert np.all(np.isfinite(single["whitener"]))


def test_energy_and_msp_scores():
    logits = np.array([[-3.0], [0.0], [4.0]], np.float32)
    views = np.concatenate([1 / (1 + np.exp(-logits)), logits], axis=1)
    layout = ViewLayout(units=1, embedding=1, head=0, embedding_layer="x")
    arrays = {"kernel": np.eye(1, dtype=np.float32), "bias": np.zeros(1, np.float32)}
    energy = score_views("energy", tf.constant(views), layout, arrays).numpy()
    pairs = np.concatenate([-logits / 2, logits / 2], axis=1)
    np.testing.assert_allclose(energy, -np.log(np.exp(pairs).sum(1)), rtol=1e-6)
    assert energy[1] > energy[0] > energy[2]  # confident either way lowers the energy
    msp = score_views("msp", tf.constant(views), layout, {}).numpy()
    np.testing.assert_allclose(msp, 1 - np.maximum(views[:, 0], 1 - views[:, 0]), rtol=1e-6)


@pytest.mark.parametrize("n", [4, 20, 37, 200])
@pytest.mark.parametrize("accept", [0.8, 0.95])
def test_calibrated_threshold_accepts_the_requested_share(n, accept):
    scores = np.random.default_rng(n).gamma(2.0, size=n)
    accepted = np.mean(scores <= calibrate(scores, accept))
    assert accept <= accepted <= accept + 1.0 / n + 1e-12
    with pytest.raises(UserError, match="ood-accept"):
        calibrate(scores, 1.0)


@pytest.mark.parametrize("name", ["small_cnn", "keras_cnn", "fast_resnet", "resnet50_head"])
def test_every_registered_model_has_an_embedding_and_a_linear_head(name):
    import keras

    from tfpipeline.models import build_model, main_model
    from tfpipeline.ood.views import head_linear, view_model

    for classes in (2, 3):
        config = ModelConfig(
            name=name, padding="same", weights="none", aux_regions=0.1 * (name == "fast_resnet")
        )
        model = main_model(build_model(config, (32, 32, 3), classes))
        view, layout = view_model(model, config)
        x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
        output, embedding, head = layout.split(np.asarray(view(x)))
        np.testing.assert_allclose(output, np.asarray(model(x)), atol=1e-6)
        assert embedding.shape == (3, layout.embedding) and layout.embedding >= 8
        kernel, bias = head_linear(model, layout)
        logits = head @ kernel + bias  # the head's logits reproduce the model's probabilities
        probs = (
            1 / (1 + np.exp(-logits))
            if classes == 2
            else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        )
        np.testing.assert_allclose(probs, output, atol=1e-5)


def test_ood_options_are_config():
    assert TrainConfig().ood == "mahalanobis" and TrainConfig().ood_accept == 0.95
    with pytest.raises(UserError, match="--ood"):
        TrainConfig(ood="knn")
    with pytest.raises(UserError, match="--ood-accept"):
        TrainConfig(ood_accept=1.0)


# --------------------------------------------------------------------------- a trained run


def test_training_fits_and_stores_the_default_detector(tiny_run):
    run = tiny_run()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["ood"] == "mahalanobis"
    stored = json.loads((run / "ood" / "ood.json").read_text())
    assert stored["method"] == "mahalanobis" and stored["accept"] == 0.95
    assert stored["counts"] == {"train": 16, "val": 4} and stored["layout"]["embedding_layer"] == "dense3"
    assert stored["val_acceptance"] >= 0.95 and set(stored["seconds"]) == {"fit", "calibrate"}
    # small_cnn's taps are its four pooling layers: their channel means lead dense3's 32 units.
    assert stored["layout"]["taps"] == ["pool1", "pool2", "pool3", "pool4"]
    width = 16 + 32 + 64 + 64 + 32 + 5  # each block at unit length, then the 5 blocks' log lengths
    assert stored["layout"]["embedding"] == width and stored["layout"]["head"] == 32
    with np.load(run / "ood" / "arrays.npz") as arrays:
        assert arrays["means"].shape == (2, width) and arrays["whitener"].shape == (width, width)


def test_a_detector_fitted_before_taps_still_scores_as_it_was_fitted(tiny_run):
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.ood.store import _layout
    from tfpipeline.ood.views import view_model

    # ood.json of a detector fitted before taps existed: no `taps` key.
    legacy = _layout({"units": 1, "embedding": 32, "head": 0, "embedding_layer": "dense3"})
    assert legacy.taps == ()
    context = open_run(tiny_run())
    model = load_run_model(context)
    _, layout = view_model(model, context.config.model, taps=legacy.taps)
    assert layout == legacy  # so OODScorer accepts it and scores the columns it was fitted on


def test_a_detector_fitted_before_taps_warns_that_it_should_be_refit(tiny_run, caplog):
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.ood.scorer import OODScorer
    from tfpipeline.ood.store import Detector, _layout, load_detector

    run = tiny_run()
    context = open_run(run)
    model = load_run_model(context)
    legacy_layout = _layout({"units": 1, "embedding": 32, "head": 0, "embedding_layer": "dense3"})
    arrays, _ = fit_mahalanobis(np.random.default_rng(0).normal(size=(20, 32)), np.arange(20) % 2)
    legacy = Detector("mahalanobis", 1.0, 0.95, "none", "unit", legacy_layout, arrays)
    with caplog.at_level("WARNING", logger="tfpipeline.ood.scorer"):
        scorer = OODScorer(model, context.config.model, legacy)
    assert "models only the dense3 embedding" in caplog.text and "tfpipeline ood fit RUN" in caplog.text
    assert scorer.batch(np.zeros((2, 32, 32, 3), np.float32))[1].shape == (2,)  # it still scores
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfpipeline.ood.scorer"):
        OODScorer(model, context.config.model, load_detector(run))  # the run's own, tapped detector
    assert "tfpipeline ood fit" not in caplog.text


def test_tapped_views_are_unit_blocks_then_their_log_lengths(tiny_run):
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.ood.views import view_model

    context = open_run(tiny_run())
    model = load_run_model(context)
    view, layout = view_model(model, context.config.model)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    _, embedding, _ = layout.split(view.predict(images, verbose=0))
    widths = [16, 32, 64, 64, 32]  # pool1..pool4 channel means, then dense3
    blocks = np.split(embedding[:, : sum(widths)], np.cumsum(widths)[:-1], axis=1)
    log_lengths = embedding[:, sum(widths) :]
    assert log_lengths.shape == (3, len(widths))
    dense3 = keras.Model(model.inputs, model.get_layer("dense3").output).predict(images, verbose=0)
    np.testing.assert_allclose(log_lengths[:, -1], np.log(np.linalg.norm(dense3, axis=1) + 1e-6), rtol=1e-4)
    for block, length in zip(blocks, log_lengths.T, strict=True):
        live = np.exp(length) > 0.1  # a dead block stays near zero instead of being blown up
        np.testing.assert_allclose(np.linalg.norm(block[live], axis=1), 1.0, atol=1e-4)


def test_refit_show_and_old_runs(tiny_run, tmp_path, capsys):
    old = _copy_run(tiny_run(), tmp_path)
    shutil.rmtree(old / "ood")  # a run made before out-of-domain detection
    inputs = str(tiny_run.data(tiny_run()) / "test")
    assert main(["predict", str(old), inputs]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(len(line.split("\t")) == 3 for line in lines)  # exactly as before
    assert main(["predict", str(old), inputs, "--csv", str(tmp_path / "s.csv"), "--ood-columns"]) == 2
    assert "ood fit" in capsys.readouterr().err
    assert main(["evaluate", str(old), "--ood-data", inputs, "--gradcam", "0", "--top-losses", "0"]) == 2
    assert "no out-of-domain detector" in capsys.readouterr().err

    assert main(["ood", "fit", str(old), "--method", "energy", "--accept", "0.75"]) == 0
    assert "method energy" in capsys.readouterr().out
    assert json.loads((old / "ood" / "ood.json").read_text())["accept"] == 0.75
    assert main(["ood", "show", str(old)]) == 0
    assert "accepts" in capsys.readouterr().out
    assert main(["ood", "fit", str(old), "--accept", "1.5"]) == 2
    assert main(["ood", "fit", str(old)]) == 0  # the default method lists the maps it taps
    assert "feature-map taps: pool1, pool2, pool3, pool4" in capsys.readouterr().out


def test_predict_reports_ood_columns_and_csv_only_when_asked(tiny_run, tmp_path, capsys):
    run = tiny_run()
    inputs = str(tiny_run.data(run) / "test")
    assert main(["predict", str(run), inputs]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 4 and all(len(fields) == 5 for fields in lines)
    assert all(float(fields[3]) >= 0 and fields[4] in ("in_domain", "out_of_domain") for fields in lines)
    threshold = json.loads((run / "ood" / "ood.json").read_text())["threshold"]
    assert all((fields[4] == "in_domain") == (float(fields[3]) <= threshold + 1e-4) for fields in lines)

    plain, extended = tmp_path / "plain.csv", tmp_path / "extended.csv"
    assert main(["predict", str(run), inputs, "--csv", str(plain)]) == 0
    assert plain.read_text().splitlines()[0] == "ID,TARGET"
    assert main(["predict", str(run), inputs, "--csv", str(extended), "--ood-columns"]) == 0
    rows = list(csv.reader(extended.open()))
    assert rows[0] == ["ID", "TARGET", "OOD_SCORE", "IN_DOMAIN"] and len(rows) == 5
    assert all(r[3] in ("0", "1") for r in rows[1:])


def test_evaluate_ood_data_any_layout(tiny_run, tmp_path):
    from sklearn.metrics import roc_auc_score

    run = tiny_run()
    folder = _ood_folder(tmp_path / "elsewhere")
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(run), "--ood-data", str(folder), "--gradcam", "0", "--top-losses", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    ood = json.loads((out / "metrics.json").read_text())["ood"]
    assert ood["method"] == "mahalanobis" and ood["num_out_of_domain"] == 5 and ood["num_in_domain"] == 4
    rows = list(csv.DictReader((out / "ood_scores.csv").open()))
    labels = [row["set"] == "ood" for row in rows]
    scores = [float(row["ood_score"]) for row in rows]
    assert ood["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    accepted = [row["in_domain"] == "1" for row in rows if row["set"] == "ood"]
    assert ood["false_acceptance"] == pytest.approx(np.mean(accepted))
    assert (out / "ood_histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Out-of-domain detection" in (out / "summary.md").read_text()
    assert "out-of-domain (mahalanobis)" in (out / "classification_report.txt").read_text()


def test_compare_methods(tiny_run, tmp_path, capsys):
    run = tiny_run()
    folder = _ood_folder(tmp_path / "elsewhere")
    argv = ["ood", "compare", str(run), "--ood-data", str(folder), "digits", "--autoencoder-steps", "5"]
    assert main([*argv, "--methods", "mahalanobis,autoencoder", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["mahalanobis", "mahalanobis", "autoencoder", "autoencoder"]
    assert all(0.0 <= r["auroc"] <= 1.0 and r["fit_seconds"] >= 0 for r in rows)
    assert rows[1]["ood_set"] == "digits (1797)"
    assert "| mahalanobis |" in capsys.readouterr().out
    assert json.loads((run / "ood" / "ood.json").read_text())["method"] == "mahalanobis"  # untouched


# --------------------------------------------------------------------------- exports


def _served_and_keras_scores(run: Path, export: Path):
    """(export's serving_default outputs, run predictor's (probs, scores)) over the run's test files."""
    from conftest import keras_reference

    from tfpipeline.evaluation.predict import load_run_predictor, predict_paths

    paths = [Path(p) for p in keras_reference(run)[0]]
    loaded = tf.saved_model.load(str(export))
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([p.read_bytes() for p in paths]))
    found = predict_paths(load_run_predictor(run), paths, batch_size=3)
    return {k: v.numpy() for k, v in served.items()}, found


@pytest.mark.parametrize("which", ["binary", "multi"])
def test_exported_ood_score_equals_the_run_score(which, export_case):
    case = export_case(which)
    served, found = _served_and_keras_scores(case.run, case.saved_model.path)
    np.testing.assert_allclose(served["ood_score"], found.ood_scores, rtol=SCORE_RTOL, atol=EXPORT_TOLERANCE)
    assert served["in_domain"].dtype == bool
    np.testing.assert_array_equal(served["in_domain"], found.in_domain)
    assert np.max(np.abs(served["probabilities"] - found.probs)) <= EXPORT_TOLERANCE
    meta = case.saved_model.metadata
    assert meta["ood"]["in_graph"] and meta["ood"]["method"] == "mahalanobis"
    assert set(meta["ood"]["outputs"]) == {"ood_score", "in_domain"}
    assert "## Out-of-domain inputs" in (case.saved_model.path / "README.md").read_text()
    pixels = tf.zeros([0, *meta["input"]["image_size"], meta["input"]["channels"]], tf.float32)
    empty = tf.saved_model.load(str(case.saved_model.path)).signatures["predict_images"](images=pixels)
    assert empty["ood_score"].shape == (0,) and empty["in_domain"].shape == (0,)


@pytest.mark.parametrize("method,tta", [("autoencoder", "none"), ("energy", "flip")])
def test_other_detectors_and_tta_in_the_graph(method, tta, tiny_run, tmp_path):
    from tfpipeline.export import export_run
    from tfpipeline.export.loader import load_export

    run = _copy_run(tiny_run(), tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["tta"] = tta
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["ood", "fit", str(run), "--method", method, "--autoencoder-steps", "5"]) == 0
    result = export_run(run, out=tmp_path / "exports")
    served, found = _served_and_keras_scores(run, result.path)
    np.testing.assert_allclose(served["ood_score"], found.ood_scores, rtol=SCORE_RTOL, atol=EXPORT_TOLERANCE)
    assert np.max(np.abs(served["probabilities"] - found.probs)) <= EXPORT_TOLERANCE
    exported = load_export(result.path)
    assert exported.ood_threshold == pytest.approx(found.ood_threshold)
    if method == "autoencoder":
        return  # the formats without OOD outputs, once
    keras_export = export_run(run, out=tmp_path / "exports", fmt="keras")
    assert not keras_export.metadata["ood"]["in_graph"]
    assert "probabilities only" in keras_export.metadata["ood"]["reason"]
    assert main(["export", str(run), "--out", str(tmp_path / "plain"), "--no-ood"]) == 0
    plain = load_export(tmp_path / "plain" / "small_cnn")
    assert plain.ood_threshold is None and plain.metadata["ood"]["reason"] == "exported with --no-ood"
    served = tf.saved_model.load(str(plain.path)).signatures["serving_default"]
    assert "ood_score" not in served.structured_outputs


def test_the_fit_uses_a_seeded_subset_of_a_large_training_split():
    from tfpipeline.data.split import Split
    from tfpipeline.ood.fit import fit_subset

    split = Split(labels=np.arange(50) % 5, paths=tuple(f"/d/{i}.png" for i in range(50)))
    assert fit_subset(split, seed=1, limit=50) is split
    chosen = fit_subset(split, seed=1, limit=20)
    assert len(chosen.labels) == 20 and chosen.paths == fit_subset(split, seed=1, limit=20).paths
    assert list(chosen.paths) == sorted(chosen.paths, key=lambda p: int(p[3:-4]))  # original order kept
    assert chosen.paths != fit_subset(split, seed=2, limit=20).paths


def test_the_autoencoders_first_train_step_creates_no_variables_so_it_is_traced_once():
    images = np.random.default_rng(0).random((32, 24, 24, 3), dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(32))).batch(16)
    with variables_created_in_functions() as created:
        _, facts = train_autoencoder(dataset, "unit", channels=3, side=24, steps=2, seed=1)
    assert created == [] and np.isfinite(facts["train_loss"])
