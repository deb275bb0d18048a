"""Export stage: SavedModel signatures vs the Keras model, fresh-process loading, bad payloads,
atomic writes, versions, metadata, model card, keras/tflite formats and the serving benchmark.

Two tiny runs are trained once per module (32x32 small_cnn, 1 epoch): a binary one whose
positive class is index 0 with a tuned threshold and `crop` resizing, and a 3-class grayscale
one with `pad` resizing and `symmetric` scaling, so the exported preprocessing is exercised
away from the defaults.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpipeline.cli import main
from tfpipeline.errors import UserError
from tfpipeline.export import archive as archive_module
from tfpipeline.export import export_run, load_export
from tfpipeline.export.metadata import data_fingerprint

REPO = Path(__file__).resolve().parents[1]
SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"
TOLERANCE = 1e-5


# --------------------------------------------------------------------------- data and runs


def _image(cls_index: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """Deterministic striped image; each class has its own colour and stripe direction."""
    width, height = size
    rng = np.random.default_rng(100 * cls_index + index)
    period = 3 + index % 4
    base = np.array([[200, 40, 30], [30, 60, 200], [40, 190, 60]][cls_index], np.float32)
    if cls_index == 1:
        stripes = (np.arange(height) // period % 2)[:, None].repeat(width, 1)
    else:
        stripes = (np.arange(width) // period % 2)[None, :].repeat(height, 0)
    image = base + 40.0 * stripes[..., None] + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_folder(root: Path, classes: tuple[str, ...], counts: dict[str, int]) -> Path:
    sizes = ((32, 32), (48, 40), (64, 48), (40, 64), (36, 30))
    formats = ("jpg", "png", "bmp")
    start = 0
    for split, count in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(start, start + count):
                fmt = formats[i % len(formats)]
                options = {"quality": 92} if fmt == "jpg" else {}
                Image.fromarray(_image(c, i, sizes[i % len(sizes)])).save(
                    folder / f"{name}_{i:03d}.{fmt}", **options
                )
        start += count
    return root


def _train(data: Path, runs: Path, *flags: str) -> Path:
    args = ["train", "--data", str(data), "--epochs", "1", "--run-dir", str(runs), "--image-size", "32"]
    args += ["--padding", "same", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.003", *flags]
    assert main(args) == 0
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An isolated cache dir for the module-scoped runs (the autouse one is per test)."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFPIPELINE_CACHE_DIR", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def binary_run(workspace) -> Path:
    data = _write_folder(workspace / "binary", ("blue", "red"), {"train": 8, "val": 3, "test": 3})
    # "blue" sorts first: a positive class at index 0, scored by the sigmoid unit.
    return _train(
        data,
        workspace / "runs_binary",
        "--positive-class",
        "blue",
        "--threshold",
        "tuned",
        "--resize",
        "crop",
    )


@pytest.fixture(scope="module")
def multi_run(workspace) -> Path:
    data = _write_folder(workspace / "multi", ("green", "blue", "red"), {"train": 6, "val": 2, "test": 2})
    flags = ("--grayscale", "--resize", "pad", "--scaling", "symmetric", "--interpolation", "bicubic")
    return _train(data, workspace / "runs_multi", *flags)


@pytest.fixture(scope="module")
def binary_export(binary_run, workspace):
    return export_run(binary_run, out=workspace / "exports")


@pytest.fixture(scope="module")
def multi_export(multi_run, workspace):
    return export_run(multi_run, out=workspace / "exports_multi", name="colours")


def keras_reference(run: Path, split: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file paths, uint8 pixels, probabilities) of one split through tfpipeline's own pipeline."""
    from tfpipeline.data.pipeline import build_dataset, decoded_images
    from tfpipeline.data.sources import resolve_source
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.evaluation.run_report import class_probabilities

    context = open_run(run)
    data = replace(context.config.data, cache="none")
    chosen = resolve_source(data).splits[split]
    dataset = build_dataset(
        chosen, data, scaling=context.scaling, training=False, num_classes=context.num_classes
    )
    raw = load_run_model(context).predict(dataset, verbose=0)
    probs = class_probabilities(raw, context.num_classes, context.positive_index)
    pixels = np.concatenate([images.numpy() for images, _ in decoded_images(chosen, data).batch(64)])
    return list(chosen.paths), pixels, probs


def _call(loaded, signature: str, **inputs) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in loaded.signatures[signature](**inputs).items()}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("which", ["binary", "multi"])
def test_signatures_match_keras_model(which, request):
    run = request.getfixturevalue(f"{which}_run")
    result = request.getfixturevalue(f"{which}_export")
    paths, pixels, expected = keras_reference(run)
    loaded = tf.saved_model.load(str(result.path))
    contents = tf.constant([Path(p).read_bytes() for p in paths])
    outputs = {
        "serving_default": _call(loaded, "serving_default", image_bytes=contents),
        "predict_images": _call(loaded, "predict_images", images=tf.constant(pixels.astype(np.float32))),
        "predict_images_uint8": _call(loaded, "predict_images_uint8", images=tf.constant(pixels)),
    }
    meta = result.metadata
    names = np.array(meta["class_names"])
    for name, out in outputs.items():
        assert out["probabilities"].shape == expected.shape, name
        assert out["probabilities"].dtype == np.float32
        assert np.max(np.abs(out["probabilities"] - expected)) <= TOLERANCE, name
        assert [n.decode() for n in out["class_name"]] == list(names[out["class_index"]])
        if which == "binary":
            positive, threshold = meta["positive_index"], meta["threshold"]["value"]
            assert positive == 0 and meta["class_names"][0] == "blue"
            np.testing.assert_allclose(out["score"], expected[:, 0], atol=TOLERANCE)
            np.testing.assert_array_equal(out["decision"], out["score"] >= threshold)
            np.testing.assert_array_equal(out["class_index"], np.where(out["decision"], 0, 1))
        else:
            assert set(out) == {"probabilities", "class_index", "class_name"}
            np.testing.assert_array_equal(out["class_index"], np.argmax(expected, axis=1))
    if which == "multi":
        assert meta["input"]["channels"] == 1 and meta["input"]["resize"] == "pad"
        assert pixels.shape[1:] == (32, 32, 1)


FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export, pixels_file, *paths = sys.argv[1:]
    model = tf.saved_model.load(export)
    contents = tf.constant([open(p, "rb").read() for p in paths])
    by_bytes = model.signatures["serving_default"](image_bytes=contents)
    pixels = tf.constant(np.load(pixels_file).astype("float32"))
    by_pixels = model.signatures["predict_images"](images=pixels)
    try:
        model.signatures["serving_default"](image_bytes=tf.constant([contents[0].numpy(), b"not an image"]))
        error = None
    except tf.errors.InvalidArgumentError as exc:
        error = exc.message
    again = model.signatures["serving_default"](image_bytes=contents)
    print(json.dumps({
        "bytes": by_bytes["probabilities"].numpy().tolist(),
        "pixels": by_pixels["probabilities"].numpy().tolist(),
        "class_name": [n.decode() for n in by_bytes["class_name"].numpy()],
        "again": again["probabilities"].numpy().tolist(),
        "error": error,
        "tfpipeline_imported": "tfpipeline" in sys.modules,
        "keras_imported": "keras" in sys.modules,
    }))
    """
)


def test_fresh_process_loads_with_tensorflow_only(binary_run, binary_export, tmp_path):
    paths, pixels, expected = keras_reference(binary_run)
    np.save(tmp_path / "pixels.npy", pixels)
    completed = subprocess.run(
        [sys.executable, "-c", FRESH, str(binary_export.path), str(tmp_path / "pixels.npy"), *paths],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["tfpipeline_imported"] is False
    for key in ("bytes", "pixels", "again"):
        assert np.max(np.abs(np.array(result[key]) - expected)) <= TOLERANCE, key
    assert "input image_bytes[1] is not a decodable image" in result["error"]


def test_bad_payload_is_a_clear_error_and_the_model_keeps_working(binary_export, binary_run):
    loaded = tf.saved_model.load(str(binary_export.path))
    serve = loaded.signatures["serving_default"]
    good = Path(keras_reference(binary_run)[0][0]).read_bytes()
    for bad in (b"", b"hello, I am text", b"\x00" * 64):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] is not a decodable image"
        ):
            serve(image_bytes=tf.constant([good, good, bad]))
    assert serve(image_bytes=tf.constant([good]))["probabilities"].shape == (1, 2)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 2) and empty["class_name"].shape == (0,)


def test_saved_model_cli_lists_signatures(binary_export):
    completed = subprocess.run(
        [str(SAVED_MODEL_CLI), "show", "--all", "--dir", str(binary_export.path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    for name in ("serving_default", "predict_images", "predict_images_uint8"):
        assert f"signature_def['{name}']" in out
    assert "inputs['image_bytes']" in out and "DT_STRING" in out
    assert "shape: (-1, 32, 32, 3)" in out
    for output in ("probabilities", "class_index", "class_name", "score", "decision"):
        assert f"outputs['{output}']" in out


def test_model_card_rest_body_round_trip(binary_export, binary_run):
    card = (binary_export.path / "README.md").read_text()
    assert '{"signature_name": "serving_default", "instances": [{"b64": "..."}]}' in card
    path = keras_reference(binary_run)[0][1]
    body = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(Path(path).read_bytes()).decode()}],
        }
    )
    request = json.loads(body)
    contents = [base64.b64decode(item["b64"]) for item in request["instances"]]
    loaded = tf.saved_model.load(str(binary_export.path))
    via_rest = _call(loaded, request["signature_name"], image_bytes=tf.constant(contents))
    direct = _call(loaded, "serving_default", image_bytes=tf.constant([Path(path).read_bytes()]))
    np.testing.assert_array_equal(via_rest["probabilities"], direct["probabilities"])


# --------------------------------------------------------------------------- metadata and card


def test_metadata_carries_the_runs_facts(binary_export, binary_run):
    meta_file = binary_export.path / "assets" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    metrics = json.loads((binary_run / "metrics.json").read_text())
    run_info = json.loads((binary_run / "run.json").read_text())
    assert meta == json.loads(json.dumps(binary_export.metadata))
    assert meta["format"] == "saved_model" and meta["name"] == "small_cnn" and meta["version"] == 1
    assert meta["class_names"] == ["blue", "red"] and meta["positive_class"] == "blue"
    assert meta["threshold"]["policy"] == "tuned"
    assert meta["threshold"]["value"] == pytest.approx(metrics["threshold"]["value"])
    assert meta["metrics"]["val"] == metrics["val"] and meta["metrics"]["test"] == metrics["test"]
    assert meta["metrics"]["train"]["epoch"] == 1 and "loss" in meta["metrics"]["train"]
    assert meta["input"] == {
        "image_size": [32, 32],
        "channels": 3,
        "color_mode": "rgb",
        "resize": "crop",
        "interpolation": "bilinear",
        "scaling": run_info["scaling"],
        "pixels": "0..255",
    }
    assert meta["model"]["name"] == "small_cnn" and meta["model"]["config"]["padding"] == "same"
    assert meta["data"]["counts"]["train"] == {"blue": 8, "red": 8}
    fingerprint = meta["data"]["fingerprint"]
    assert fingerprint == data_fingerprint(binary_run, run_info["data"])
    assert len(fingerprint["sha256"]) == 64 and "splits" in fingerprint["over"]
    assert set(meta["versions"]) >= {"tfpipeline", "tensorflow", "keras"}
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert meta["created"].endswith("+00:00")


def test_fingerprint_changes_with_the_file_list(binary_run, tmp_path):
    copy = tmp_path / "run"
    (copy / "splits").mkdir(parents=True)
    for csv_file in (binary_run / "splits").glob("*.csv"):
        (copy / "splits" / csv_file.name).write_text(csv_file.read_text())
    same = data_fingerprint(copy, {})
    assert same == data_fingerprint(binary_run, {"ignored": True})
    train = copy / "splits" / "train.csv"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))
    assert data_fingerprint(copy, {})["sha256"] != same["sha256"]
    assert data_fingerprint(tmp_path / "nothing", {"a": 1}) != data_fingerprint(
        tmp_path / "nothing", {"a": 2}
    )


def test_model_card_states_the_runs_metrics(binary_export, multi_export, binary_run):
    card = (binary_export.path / "README.md").read_text()
    metrics = json.loads((binary_run / "metrics.json").read_text())
    for split in ("val", "test"):
        rows = [line for line in card.splitlines() if line.startswith(f"| {split} | ")]
        row = rows[-1]  # the metrics table comes after the per-split counts table
        for key in ("accuracy", "precision", "recall", "f1"):
            assert f"{metrics[split][key]:.4f}" in row, (split, key)
    assert f"`{metrics['threshold']['value']:.4f}`" in card and "policy `tuned`" in card
    assert "**blue** (the positive class)" in card
    for section in ("What it detects", "Training data", "Intended use", "Limitations", "Bias and fairness"):
        assert f"## {section}" in card
    assert "| train | 8 | 8 | 16 |" in card and "deepfakes" in card and "per subgroup" in card
    assert "prediction_service_pb2_grpc" in card and "v1/models/small_cnn:predict" in card
    multi_card = (multi_export.path / "README.md").read_text()
    assert "3-class classifier" in multi_card and "argmax" in multi_card


# --------------------------------------------------------------------------- layout, atomicity, CLI


def test_versions_refusal_and_force(binary_run, tmp_path, capsys):
    out = tmp_path / "exports"
    assert main(["export", str(binary_run), "--out", str(out), "--name", "faces", "--version", "3"]) == 0
    assert "exported saved_model to" in capsys.readouterr().out
    first = (out / "faces" / "3" / "assets" / "metadata.json").read_text()

    assert main(["export", str(binary_run), "--out", str(out), "--name", "faces", "--version", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'faces' / '3'} already exists" in err and "--force" in err
    assert (out / "faces" / "3" / "assets" / "metadata.json").read_text() == first

    assert (
        main(["export", str(binary_run), "--out", str(out), "--name", "faces", "--version", "3", "--force"])
        == 0
    )
    assert json.loads((out / "faces" / "3" / "assets" / "metadata.json").read_text())["version"] == 3
    assert (out / "faces" / "3" / "saved_model.pb").is_file()
    # Without --version: one more than the highest existing version.
    result = export_run(binary_run, out=out, name="faces", fmt="keras")
    assert result.version == 4 and (out / "faces" / "4" / "model.keras").is_file()
    assert sorted(p.name for p in (out / "faces").iterdir()) == ["3", "4"]
    with pytest.raises(UserError, match="--name"):
        export_run(binary_run, out=out, name="../escape")
    assert main(["export", str(tmp_path), "--out", str(out)]) == 2
    assert "not a tfpipeline run folder" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["saved_model", "keras"])
def test_interrupted_export_leaves_nothing(binary_run, tmp_path, monkeypatch, fmt):
    out = tmp_path / "exports"
    written = []

    def fail(folder, metadata):
        written.append(sorted(p.name for p in folder.iterdir()))  # the model is already there
        raise KeyboardInterrupt("interrupted mid-write")

    monkeypatch.setattr(archive_module, "write_model_card", fail)
    with pytest.raises(KeyboardInterrupt):
        export_run(binary_run, out=out, version=1, fmt=fmt)
    assert written and ("saved_model.pb" in written[0] or "model.keras" in written[0])
    assert not (out / "small_cnn" / "1").exists()
    assert list((out / "small_cnn").iterdir()) == []  # no temporary folder left


def test_failed_force_keeps_the_previous_version(binary_run, tmp_path, monkeypatch):
    out = tmp_path / "exports"
    export_run(binary_run, out=out, version=1, fmt="keras")
    before = (out / "small_cnn" / "1" / "metadata.json").read_text()
    monkeypatch.setattr(
        archive_module, "write_model_card", lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        export_run(binary_run, out=out, version=1, fmt="keras", force=True)
    assert (out / "small_cnn" / "1" / "metadata.json").read_text() == before
    assert [p.name for p in (out / "small_cnn").iterdir()] == ["1"]


# --------------------------------------------------------------------------- other formats, loader


def test_tflite_export_agrees_with_keras(binary_run, tmp_path):
    result = export_run(binary_run, out=tmp_path, fmt="tflite")
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
    paths, pixels, expected = keras_reference(binary_run)
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


def test_onnx_export_agrees_with_keras(binary_run, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    assert main(["export", str(binary_run), "--out", str(tmp_path), "--format", "onnx"]) == 0
    assert "onnx: " in capsys.readouterr().out
    folder = tmp_path / "small_cnn" / "1"
    meta = json.loads((folder / "metadata.json").read_text())
    converted = meta["onnx"]
    assert (folder / "model.onnx").stat().st_size == converted["size_bytes"] > 10_000
    assert converted["max_abs_prob_diff"] <= converted["tolerance"]
    assert converted["decisive_agreement_pct"] in (100.0, None)
    assert converted["num_images"] == 12 and converted["opset"] == 17
    paths, pixels, expected = keras_reference(binary_run)
    np.testing.assert_allclose(load_export(folder).predict_pixels(pixels), expected, atol=1e-4)


def test_load_export_for_predict(binary_export, binary_run, multi_export, multi_run, tmp_path):
    from tfpipeline.evaluation.predict import predict_files

    paths, pixels, expected = keras_reference(binary_run)
    exported = load_export(binary_export.path.parent)  # the model folder: its highest version
    assert exported.path == binary_export.path
    assert exported.class_names == ("blue", "red") and exported.rule.positive_index == 0
    assert exported.rule.value == pytest.approx(binary_export.metadata["threshold"]["value"])
    probs = exported.predict_bytes([Path(p).read_bytes() for p in paths])
    assert np.max(np.abs(probs - expected)) <= TOLERANCE
    good, via_predict, bad = predict_files(exported, [Path(p) for p in paths], batch_size=4)
    assert bad == [] and np.max(np.abs(via_predict - expected)) <= TOLERANCE

    multi_paths, multi_pixels, multi_expected = keras_reference(multi_run)
    keras_export = load_export(export_run(multi_run, out=tmp_path, fmt="keras").path)
    assert keras_export.format == "keras" and keras_export.class_names == ("blue", "green", "red")
    np.testing.assert_allclose(keras_export.predict_pixels(multi_pixels), multi_expected, atol=TOLERANCE)
    via_bytes = keras_export.predict_bytes([Path(p).read_bytes() for p in multi_paths])
    np.testing.assert_allclose(via_bytes, multi_expected, atol=TOLERANCE)
    with pytest.raises(UserError, match="not a tfpipeline export"):
        load_export(tmp_path / "nowhere")


# --------------------------------------------------------------------------- benchmark smoke


def test_serving_benchmark_quick(binary_run):
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "serving.py"),
            "--run",
            str(binary_run),
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
    assert result["run_trained_by_benchmark"] is False and set(result["loadavg_1min"]) == {"before", "after"}
