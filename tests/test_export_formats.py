"""Export stage, beyond the SavedModel itself: versioned layout (refusal, --force, next version),
atomic writes (an interrupted or failed export leaves the previous state), the keras, tflite
and onnx formats agreeing with the Keras model, `load_export` for predict, and the serving
benchmark smoke test.

Uses the same session runs as test_export.py (`export_case`, see conftest).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXPORT_TOLERANCE as TOLERANCE
from conftest import keras_reference

from tfpipeline.cli import main
from tfpipeline.errors import UserError
from tfpipeline.export import archive as archive_module
from tfpipeline.export import export_run, load_export

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- layout, atomicity, CLI


def test_versions_refusal_and_force(export_case, tmp_path, capsys):
    binary = export_case("binary")
    out = tmp_path / "exports"
    assert main(["export", str(binary.run), "--out", str(out), "--name", "faces", "--version", "3"]) == 0
    assert "exported saved_model to" in capsys.readouterr().out
    first = (out / "faces" / "3" / "assets" / "metadata.json").read_text()

    assert main(["export", str(binary.run), "--out", str(out), "--name", "faces", "--version", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'faces' / '3'} already exists" in err and "--force" in err
    assert (out / "faces" / "3" / "assets" / "metadata.json").read_text() == first

    assert (
        main(["export", str(binary.run), "--out", str(out), "--name", "faces", "--version", "3", "--force"])
        == 0
    )
    assert json.loads((out / "faces" / "3" / "assets" / "metadata.json").read_text())["version"] == 3
    assert (out / "faces" / "3" / "saved_model.pb").is_file()
    # Without --version: one more than the highest existing version.
    result = export_run(binary.run, out=out, name="faces", fmt="keras")
    assert result.version == 4 and (out / "faces" / "4" / "model.keras").is_file()
    assert sorted(p.name for p in (out / "faces").iterdir()) == ["3", "4"]
    with pytest.raises(UserError, match="--name"):
        export_run(binary.run, out=out, name="../escape")
    assert main(["export", str(tmp_path), "--out", str(out)]) == 2
    assert "not a tfpipeline run folder" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["saved_model", "keras"])
def test_interrupted_export_leaves_nothing(export_case, tmp_path, monkeypatch, fmt):
    binary = export_case("binary")
    out = tmp_path / "exports"
    written = []

    def fail(folder, metadata):
        written.append(sorted(p.name for p in folder.iterdir()))  # the model is already there
        raise KeyboardInterrupt("interrupted mid-write")

    monkeypatch.setattr(archive_module, "write_model_card", fail)
    with pytest.raises(KeyboardInterrupt):
        export_run(binary.run, out=out, version=1, fmt=fmt)
    assert written and ("saved_model.pb" in written[0] or "model.keras" in written[0])
    assert not (out / "small_cnn" / "1").exists()
    assert list((out / "small_cnn").iterdir()) == []  # no temporary folder left


def test_failed_force_keeps_the_previous_version(export_case, tmp_path, monkeypatch):
    binary = export_case("binary")
    out = tmp_path / "exports"
    export_run(binary.run, out=out, version=1, fmt="keras")
    before = (out / "small_cnn" / "1" / "metadata.json").read_text()
    monkeypatch.setattr(
        archive_module, "write_model_card", lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        export_run(binary.run, out=out, version=1, fmt="keras", force=True)
    assert (out / "small_cnn" / "1" / "metadata.json").read_text() == before
    assert [p.name for p in (out / "small_cnn").iterdir()] == ["1"]


# --------------------------------------------------------------------------- other formats, loader


def test_tflite_export_agrees_with_keras(export_case, tmp_path):
    binary = export_case("binary")
    result = export_run(binary.run, out=tmp_path, fmt="tflite")
    lite = result.metadata["tflite"]
    assert (result.path / "model.tflite").stat().st_size == lite["size_bytes"] > 10_000
    assert lite["split"] == "val+test" and lite["num_images"] == 12
    # Every image whose Keras decision is clear of the tolerance must agree; one within it may
    # flip on some CPUs (both numbers are recorded).
    assert lite["max_abs_prob_diff"] <= lite["tolerance"] == 1e-3
    assert lite["decisive_agreement_pct"] in (100.0, None)
    assert lite["agreement_pct"] >= 100.0 * (12 - lite["near_threshold"]) / 12
    assert json.loads((result.path / "metadata.json").read_text())["tflite"] == lite
    assert "TFLite conversion" in (result.path / "README.md").read_text()
    paths, pixels, expected = keras_reference(binary.run)
    exported = load_export(result.path)
    np.testing.assert_allclose(exported.predict_pixels(pixels), expected, atol=1e-4)


def test_a_near_threshold_flip_is_not_a_conversion_error():
    from tfpipeline.decision import DecisionRule
    from tfpipeline.evaluation.run_context import ServingSpec
    from tfpipeline.export.tflite import compare_probabilities

    rule = DecisionRule.for_classes("0.5", ("blue", "red"))
    spec = ServingSpec(("blue", "red"), rule, (32, 32), 3, "stretch", "bilinear", "unit")
    reference = np.array([[0.2, 0.8], [0.50002, 0.49998], [0.9, 0.1]])
    converted = reference + np.array([[0, 0], [-4e-5, 4e-5], [0, 0]])  # the middle one flips to red
    report = compare_probabilities(converted, reference, spec)
    assert report["agreement_pct"] == pytest.approx(66.67) and report["near_threshold"] == 1
    assert report["decisive_agreement_pct"] == 100.0
    converted[0] = [0.7, 0.3]  # a clear decision that changes is a real disagreement
    assert compare_probabilities(converted, reference, spec)["decisive_agreement_pct"] == 50.0


def test_onnx_export_agrees_with_keras(export_case, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    binary = export_case("binary")
    assert main(["export", str(binary.run), "--out", str(tmp_path), "--format", "onnx"]) == 0
    assert "onnx: " in capsys.readouterr().out
    folder = tmp_path / "small_cnn" / "1"
    meta = json.loads((folder / "metadata.json").read_text())
    converted = meta["onnx"]
    assert (folder / "model.onnx").stat().st_size == converted["size_bytes"] > 10_000
    assert converted["max_abs_prob_diff"] <= converted["tolerance"]
    assert converted["decisive_agreement_pct"] in (100.0, None)
    assert converted["num_images"] == 12 and converted["opset"] == 17
    paths, pixels, expected = keras_reference(binary.run)
    np.testing.assert_allclose(load_export(folder).predict_pixels(pixels), expected, atol=1e-4)


def test_load_export_for_predict(export_case, tmp_path):
    from tfpipeline.evaluation.predict import predict_files

    binary = export_case("binary")
    multi = export_case("multi")
    paths, pixels, expected = keras_reference(binary.run)
    exported = load_export(binary.saved_model.path.parent)  # the model folder: its highest version
    assert exported.path == binary.saved_model.path
    assert exported.class_names == ("blue", "red") and exported.rule.positive_index == 0
    assert exported.rule.value == pytest.approx(binary.saved_model.metadata["threshold"]["value"])
    probs = exported.predict_bytes([Path(p).read_bytes() for p in paths])
    assert np.max(np.abs(probs - expected)) <= TOLERANCE
    good, via_predict, bad = predict_files(exported, [Path(p) for p in paths], batch_size=4)
    assert bad == [] and np.max(np.abs(via_predict - expected)) <= TOLERANCE

    multi_paths, multi_pixels, multi_expected = keras_reference(multi.run)
    keras_export = load_export(export_run(multi.run, out=tmp_path, fmt="keras").path)
    assert keras_export.format == "keras" and keras_export.class_names == ("blue", "green", "red")
    np.testing.assert_allclose(keras_export.predict_pixels(multi_pixels), multi_expected, atol=TOLERANCE)
    via_bytes = keras_export.predict_bytes([Path(p).read_bytes() for p in multi_paths])
    np.testing.assert_allclose(via_bytes, multi_expected, atol=TOLERANCE)
    with pytest.raises(UserError, match="not a tfpipeline export"):
        load_export(tmp_path / "nowhere")


# --------------------------------------------------------------------------- benchmark smoke


@pytest.mark.slow  # benchmark smoke test (18 s); run with -m slow
def test_serving_benchmark_quick(export_case):
    binary = export_case("binary")
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "serving.py"),
            "--run",
            str(binary.run),
            "--quick",
            "--calls",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    methods = {"serving_default_bytes", "predict_images_float", "predict_images_uint8", "keras_model_predict"}
    methods.add("keras_model_call")
    assert set(result["single_image_latency"]) == methods == set(result["batch_images_per_s"])
    for name, timing in result["single_image_latency"].items():
        assert 0 < timing["min_ms"] <= timing["p50_ms"] <= timing["p99_ms"], name
        assert timing["calls"] == 5
    assert all(v > 0 for v in result["batch_images_per_s"].values())
    assert result["quick"] is True and result["image_size"] == [32, 32]
    assert result["cpu"]["cores"] >= 1 and "model" in result["cpu"]
    assert result["run_trained_by_benchmark"] is False and set(result["loadavg_1min"]) == {"before", "after"}


def test_a_bfloat16_run_predicts_and_exports_in_float32(tiny_run, tmp_path):
    """Mixed precision speeds up training only: its weights are rebuilt in float32 for everything
    after it, so evaluate and every export compute the same numbers. (Before, TFLite and ONNX
    refused the model, and the SavedModel and Keras exports agreed with evaluate only to ~1e-3.)"""
    import keras

    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.models.precision import as_float32

    run = tiny_run("--precision", "bfloat16")
    trained = keras.models.load_model(open_run(run).run.model_checkpoint(), compile=False)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in trained.layers}
    model = load_run_model(open_run(run))  # what evaluate, predict, Grad-CAM and export use
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    for weights, copied in zip(trained.weights, model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), keras.ops.convert_to_numpy(copied))
    pixels = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    # The copy computes in float32, the trained model in bfloat16: they agree to its rounding.
    np.testing.assert_allclose(model(pixels), np.asarray(trained(pixels), np.float32), atol=0.02)
    assert as_float32(model) is model  # a float32 model is used as it is

    paths, images, expected = keras_reference(run)  # evaluate's probabilities
    formats = ["saved_model", "keras", "tflite"] + (["onnx"] if importlib.util.find_spec("tf2onnx") else [])
    folders = {}
    for fmt in formats:
        result = export_run(run, out=tmp_path / fmt, fmt=fmt)
        exported, folders[fmt] = load_export(result.path), result.path
        # Converted runtimes reorder float sums (1e-4); the SavedModel and Keras export are exact.
        tolerance = 1e-4 if fmt in ("tflite", "onnx") else TOLERANCE
        np.testing.assert_allclose(exported.predict_pixels(images), expected, atol=tolerance, err_msg=fmt)
        if fmt in ("tflite", "onnx"):
            report = result.metadata[fmt]
            assert report["num_images"] > 0 and report["agreement_pct"] is not None, report
            assert (result.path / f"model.{fmt}").stat().st_size == report["size_bytes"]
    keras_file = keras.models.load_model(folders["keras"] / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in keras_file._flatten_layers()} == {"float32"}
