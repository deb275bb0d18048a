"""Export stage, SavedModel: its three signatures agree with the Keras model, a fresh process
loads it with TensorFlow alone, bad payloads are clear errors, `saved_model_cli` lists the
signatures, the model card's REST body round-trips, and metadata and the card carry the run's
facts (threshold, metrics, input preprocessing, data fingerprint).

The runs are `export_case("binary")` (positive class at index 0, tuned threshold, `crop`
resizing) and `export_case("multi")` (3 classes, grayscale, `pad`, `symmetric` scaling), 1-epoch
32x32 small_cnn runs trained once per session (see conftest). Versions, atomic writes, the
keras/tflite/onnx formats, the loader and the serving benchmark are in test_export_formats.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import EXPORT_TOLERANCE as TOLERANCE
from conftest import keras_reference

from tfpipeline.export.metadata import data_fingerprint

SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"


def _call(loaded, signature: str, **inputs) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in loaded.signatures[signature](**inputs).items()}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("which", ["binary", "multi"])
def test_signatures_match_keras_model(which, export_case):
    case = export_case(which)
    run, result = case.run, case.saved_model
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
            assert set(out) == {"probabilities", "class_index", "class_name", "ood_score", "in_domain"}
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


def test_fresh_process_loads_with_tensorflow_only(export_case, tmp_path):
    binary = export_case("binary")
    paths, pixels, expected = keras_reference(binary.run)
    np.save(tmp_path / "pixels.npy", pixels)
    completed = subprocess.run(
        [sys.executable, "-c", FRESH, str(binary.saved_model.path), str(tmp_path / "pixels.npy"), *paths],
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


def test_bad_payload_is_a_clear_error_and_the_model_keeps_working(export_case):
    binary = export_case("binary")
    loaded = tf.saved_model.load(str(binary.saved_model.path))
    serve = loaded.signatures["serving_default"]
    good = Path(keras_reference(binary.run)[0][0]).read_bytes()
    for bad in (b"", b"hello, I am text", b"\x00" * 64):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] is not a decodable image"
        ):
            serve(image_bytes=tf.constant([good, good, bad]))
    assert serve(image_bytes=tf.constant([good]))["probabilities"].shape == (1, 2)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 2) and empty["class_name"].shape == (0,)


def test_saved_model_cli_lists_signatures(export_case):
    binary = export_case("binary")
    completed = subprocess.run(
        [str(SAVED_MODEL_CLI), "show", "--all", "--dir", str(binary.saved_model.path)],
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


def test_model_card_rest_body_round_trip(export_case):
    binary = export_case("binary")
    card = (binary.saved_model.path / "README.md").read_text()
    assert '{"signature_name": "serving_default", "instances": [{"b64": "..."}]}' in card
    path = keras_reference(binary.run)[0][1]
    body = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(Path(path).read_bytes()).decode()}],
        }
    )
    request = json.loads(body)
    contents = [base64.b64decode(item["b64"]) for item in request["instances"]]
    loaded = tf.saved_model.load(str(binary.saved_model.path))
    via_rest = _call(loaded, request["signature_name"], image_bytes=tf.constant(contents))
    direct = _call(loaded, "serving_default", image_bytes=tf.constant([Path(path).read_bytes()]))
    np.testing.assert_array_equal(via_rest["probabilities"], direct["probabilities"])


# --------------------------------------------------------------------------- metadata and card


def test_metadata_carries_the_runs_facts(export_case):
    binary = export_case("binary")
    meta_file = binary.saved_model.path / "assets" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    metrics = json.loads((binary.run / "metrics.json").read_text())
    run_info = json.loads((binary.run / "run.json").read_text())
    assert meta == json.loads(json.dumps(binary.saved_model.metadata))
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
    assert fingerprint == data_fingerprint(binary.run, run_info["data"])
    assert len(fingerprint["sha256"]) == 64 and "splits" in fingerprint["over"]
    assert set(meta["versions"]) >= {"tfpipeline", "tensorflow", "keras"}
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert meta["created"].endswith("+00:00")


def test_fingerprint_changes_with_the_file_list(export_case, tmp_path):
    binary = export_case("binary")
    copy = tmp_path / "run"
    (copy / "splits").mkdir(parents=True)
    for csv_file in (binary.run / "splits").glob("*.csv"):
        (copy / "splits" / csv_file.name).write_text(csv_file.read_text())
    same = data_fingerprint(copy, {})
    assert same == data_fingerprint(binary.run, {"ignored": True})
    train = copy / "splits" / "train.csv"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))
    assert data_fingerprint(copy, {})["sha256"] != same["sha256"]
    assert data_fingerprint(tmp_path / "nothing", {"a": 1}) != data_fingerprint(
        tmp_path / "nothing", {"a": 2}
    )


def test_model_card_states_the_runs_metrics(export_case):
    binary = export_case("binary")
    multi = export_case("multi")
    card = (binary.saved_model.path / "README.md").read_text()
    metrics = json.loads((binary.run / "metrics.json").read_text())
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
    multi_card = (multi.saved_model.path / "README.md").read_text()
    assert "3-class classifier" in multi_card and "argmax" in multi_card
