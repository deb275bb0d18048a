"""Serving limits of an exported model: decompression bombs refused inside the SavedModel in
milliseconds with little memory, max_bytes / max_pixels / max_side / max_batch at and over the
limit on every signature, a refused input never stopping other requests, limits raised at export
time, recorded in metadata.json and the model card, and applied by `tfpipeline predict` and the
loader to an export of any format. The bounded load benchmark runs under `-m slow`.

Uses `export_case("binary")` (a 1-epoch 32x32 small_cnn; see conftest) and two exports of its run
with other limits: "tight" (exactly the test images' largest size, bytes and a batch of 4) and
"raised" (--max-side 20000).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tensorflow as tf
from conftest import EXPORT_TOLERANCE as TOLERANCE
from conftest import keras_reference
from PIL import Image

from tfpipeline.cli import main
from tfpipeline.errors import UserError
from tfpipeline.export import export_run, load_export
from tfpipeline.export.hostile import gif_bomb, jpeg_bomb, png_bomb
from tfpipeline.export.limits import ServingLimits

REPO = Path(__file__).resolve().parents[1]
TIGHT = {"max_pixels": 40 * 64, "max_side": 64, "max_batch": 4}  # max_bytes: the largest test file


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def rss_growth():
    """Yields a dict whose "mb" is, on exit, the peak RSS growth (MB) over the block (2 ms samples)."""
    process, stop, found = psutil.Process(), threading.Event(), {}
    start = peak = process.memory_info().rss

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield found
    finally:
        stop.set()
        sampler.join()
        found["mb"] = (max(peak, process.memory_info().rss) - start) / 2**20


@pytest.fixture(scope="module")
def reference(export_case):
    """(test files' bytes, their probabilities through the training pipeline: the unguarded result)."""
    paths, _, probs = keras_reference(export_case("binary").run)
    return [Path(p).read_bytes() for p in paths], probs


@pytest.fixture(scope="module")
def served(export_case):
    return tf.saved_model.load(str(export_case("binary").saved_model.path))


@pytest.fixture(scope="module")
def tight(export_case, reference, tmp_path_factory):
    """The run exported through the CLI with TIGHT limits and max_bytes = the largest test file."""
    contents, _ = reference
    out = tmp_path_factory.mktemp("tight")
    flags = [
        f"--{k.replace('_', '-')}={v}" for k, v in {**TIGHT, "max_bytes": max(map(len, contents))}.items()
    ]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert (
            main(["export", str(export_case("binary").run), "--out", str(out), "--name", "tight", *flags])
            == 0
        )
    return out / "tight" / "1", printed.getvalue()


def refused(signature, match: str, **inputs) -> float:
    """Call `signature`, expect InvalidArgumentError matching `match`; the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        signature(**inputs)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- bombs


@pytest.mark.parametrize(
    ("bomb", "size", "fmt"),
    [
        (png_bomb, (20_000, 20_000), "PNG"),
        (jpeg_bomb, (30_000, 30_000), "JPEG"),
        (gif_bomb, (20_000, 20_000), "GIF"),
    ],
)
def test_bombs_are_refused_in_milliseconds_with_little_memory(served, reference, bomb, size, fmt):
    serve = served.signatures["serving_default"]
    good, expected = reference[0][0], reference[1][:1]
    payload = tf.constant([good, bomb(*size)])
    serve(image_bytes=payload[:1])  # warm: the first call initialises kernels
    pixels = size[0] * size[1]
    message = (
        rf"input image_bytes\[1\] declares {size[0]}x{size[1]} pixels \({pixels}\) in its {fmt} header, "
        r"more than max_pixels 40000000"
    )
    with rss_growth() as growth:
        seconds = refused(serve, message, image_bytes=payload)
    assert seconds < 1.0 and growth["mb"] < 200, (seconds, growth)
    again = serve(image_bytes=payload[:1])["probabilities"].numpy()
    assert np.max(np.abs(again - expected)) <= TOLERANCE  # the model keeps serving


def test_refused_inputs_never_stop_other_requests(served, reference):
    serve = served.signatures["serving_default"]
    contents, expected = reference
    bad = [png_bomb(20_000, 20_000), b"not an image", contents[0][: len(contents[0]) // 2], b""]
    outcomes: list[tuple[str, bool]] = []

    def client(index: int) -> None:
        for step in range(6):
            if index % 2:
                try:
                    serve(image_bytes=tf.constant([bad[(index + step) % len(bad)]]))
                    outcomes.append(("bad", False))
                except tf.errors.InvalidArgumentError:
                    outcomes.append(("bad", True))
            else:
                probs = serve(image_bytes=tf.constant(contents))["probabilities"].numpy()
                outcomes.append(("good", bool(np.max(np.abs(probs - expected)) <= TOLERANCE)))

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert len(outcomes) == 24 and all(ok for _, ok in outcomes), outcomes


# --------------------------------------------------------------------------- each limit, at and over


def test_images_at_the_limits_are_served_like_the_unguarded_pipeline(tight, reference):
    folder, _ = tight
    contents, expected = reference
    sizes = [Image.open(io.BytesIO(c)).size for c in contents]
    assert (40, 64) in sizes and max(w * h for w, h in sizes) == TIGHT["max_pixels"]  # some at the limit
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    for start in range(0, len(contents), 4):
        probs = serve(image_bytes=tf.constant(contents[start : start + 4]))["probabilities"].numpy()
        assert np.max(np.abs(probs - expected[start : start + 4])) <= TOLERANCE
    largest = max(contents, key=len)
    refused(serve, r"input image_bytes\[0\] declares 64x41 pixels \(2624\) in its PNG header, more than "
            r"max_pixels 2560", image_bytes=tf.constant([png(64, 41)]))  # fmt: skip
    refused(serve, r"input image_bytes\[1\] declares 65x10 pixels in its PNG header, a side longer than "
            r"max_side 64", image_bytes=tf.constant([largest, png(65, 10)]))  # fmt: skip
    refused(serve, rf"input image_bytes\[0\] is {len(largest) + 1} bytes, more than max_bytes {len(largest)}",
            image_bytes=tf.constant([largest + b"\0"]))  # fmt: skip


def test_max_batch_applies_to_every_signature(export_case, tight, reference):
    folder, _ = tight
    contents, _ = reference
    loaded = tf.saved_model.load(str(folder))
    _, pixels, _ = keras_reference(export_case("binary").run)
    calls = {
        "serving_default": ("image_bytes", "image_bytes", contents[:5]),
        "predict_images": ("images", "images", pixels[:5].astype(np.float32)),
        "predict_images_uint8": ("images", "images", pixels[:5]),
    }
    for name, (argument, shown, batch) in calls.items():
        signature = loaded.signatures[name]
        assert signature(**{argument: tf.constant(batch[:4])})["probabilities"].shape == (4, 2)
        refused(
            signature,
            rf"input {shown} holds 5 images, more than max_batch 4",
            **{argument: tf.constant(batch)},
        )


def test_limits_can_be_raised_for_huge_images(export_case, served, tmp_path):
    from tfpipeline.evaluation.predict import load_run_predictor

    run = export_case("binary").run
    wide = png(17_000, 10)  # wider than the default max_side (16,384), 170,000 pixels
    refused(
        served.signatures["serving_default"],
        "a side longer than max_side 16384",
        image_bytes=tf.constant([wide]),
    )
    raised = export_run(run, out=tmp_path, name="raised", limits=ServingLimits(max_side=20_000))
    assert raised.metadata["limits"]["max_side"] == 20_000
    serve = tf.saved_model.load(str(raised.path)).signatures["serving_default"]
    probs = serve(image_bytes=tf.constant([wide]))["probabilities"].numpy()
    unguarded = load_run_predictor(run)  # the run's own decode: the data stage's limits (30,000 a side)
    expected = unguarded(tf.expand_dims(unguarded.preprocess(tf.constant(wide)), 0))
    assert np.max(np.abs(probs - expected)) <= TOLERANCE


# --------------------------------------------------------------------------- recorded and applied


def test_limits_are_recorded_and_shown(export_case, tight, reference):
    folder, printed = tight
    largest = max(map(len, reference[0]))
    meta = json.loads((folder / "assets" / "metadata.json").read_text())
    assert meta["limits"] == {**TIGHT, "max_bytes": largest}
    assert f"limits: 2,560 pixels (64 a side) and {largest:,} bytes an image, 4 images a call" in printed
    card = (folder / "README.md").read_text()
    assert (
        "## Serving limits" in card and "| `max_pixels` | 2,560 |" in card and "| `max_batch` | 4 |" in card
    )
    default = export_case("binary").saved_model.metadata["limits"]
    assert default == {
        "max_pixels": 40_000_000,
        "max_side": 16_384,
        "max_bytes": 20_000_000,
        "max_batch": 256,
    }


def test_cli_refuses_a_bad_limit(export_case, tmp_path, capsys):
    run = str(export_case("binary").run)
    assert main(["export", run, "--out", str(tmp_path), "--max-pixels", "0"]) == 2
    assert "--max-pixels" in capsys.readouterr().err and not (tmp_path / "small_cnn").exists()
    with pytest.raises(UserError, match="--max-batch must be a whole number of at least 1"):
        ServingLimits(max_batch=0)


def test_predict_and_the_loader_apply_the_exports_limits(export_case, tight, reference, tmp_path, capsys):
    folder, _ = tight
    contents, expected = reference
    files = []
    for index, data in enumerate(contents[:5]):
        files.append(tmp_path / f"{index}.img")
        files[-1].write_bytes(data)
    over = tmp_path / "over.png"
    over.write_bytes(png(64, 41))
    assert main(["predict", str(folder), str(over)]) == 2
    assert (
        "input image_bytes[0] declares 64x41 pixels (2624) in its PNG header, more than max_pixels 2560"
        in (capsys.readouterr().err)
    )
    assert main(["predict", str(folder), *map(str, files), "--batch-size", "5"]) == 2
    assert "--batch-size 4 or less" in capsys.readouterr().err
    assert main(["predict", str(folder), *map(str, files), "--batch-size", "4"]) == 0
    # A keras export takes pixels: its loader decodes behind the same limits.
    limits = ServingLimits(**{**TIGHT, "max_bytes": max(map(len, contents))})
    keras_export = load_export(
        export_run(export_case("binary").run, out=tmp_path, fmt="keras", limits=limits).path
    )
    assert keras_export.limits == limits
    np.testing.assert_allclose(keras_export.predict_bytes(contents[:4]), expected[:4], atol=TOLERANCE)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] declares 64x41 pixels"):
        keras_export.predict_bytes([contents[0], over.read_bytes()])
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds 5 images, more than max_batch 4"):
        keras_export.predict_bytes(contents[:5])


# --------------------------------------------------------------------------- load benchmark


@pytest.mark.slow
def test_serving_load_benchmark_is_bounded(export_case):
    run = export_case("binary").run
    command = [sys.executable, str(REPO / "benchmarks" / "serving_load.py"), "--run", str(run)]
    done = subprocess.run(
        [*command, "--requests", "300", "--threads", "4", "--time-limit", "120"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"]["completed"] == 300 and result["valid"]["count"] > 100
    assert result["goal"]["all_valid_correct"] and result["goal"]["every_invalid_refused"]
    assert result["rss_mb"]["growth_during_load"] < 300 and result["goal"]["peak_rss_met"]
    for kind in ("png_bomb", "jpeg_bomb", "gif_bomb"):
        assert "more than max_pixels 40000000" in result["invalid"][kind]["error"]
    assert set(result["cpu"]) >= {"model", "cores"} and result["tensorflow"] == tf.__version__
    assert set(result["loadavg_1min"]) == {"before", "after"}
