#!/usr/bin/env python3
"""Serving latency and throughput of an exported SavedModel vs the Keras model, in one run.

Exports RUN (or a quickly trained small_cnn at 224x224 on the embedded faces when --run is not
given) with `tfpipeline export`, reloads it with `tf.saved_model.load`, and times on the run's
held-out images:

- `serving_default` (JPEG bytes in: decode + resize + scale + model, all in the graph),
- `predict_images` (float32 pixels in) and `predict_images_uint8`,
- `model.predict(x)` and `model(x, training=False)` on the Keras checkpoint,

as single-image latency (p50/p99/mean ms over --calls calls after a warm-up) and batch-32
throughput (images/s).

When the run has an out-of-domain detector (`RUN/ood/`), it is also exported with `--no-ood`
and `predict_images` of both exports is timed call by call in alternation (so background load
hits both alike): `ood_overhead` reports the extra latency and per-image batch time of the
`ood_score` / `in_domain` outputs, against the goal of at most 20 %.

    python benchmarks/serving.py [--run RUN] [--calls 200] [--batch-size 32] [--quick]

`--quick` is a smoke mode (tiny model at 32x32 when no --run, 20 calls, 2 batches). Prints one
JSON object (the last line of output); training and export chatter goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

GOAL_P50_MS = 5.0  # predict_images, one image, small_cnn at 224x224, this 2-core CPU
GOAL_OOD_OVERHEAD_PCT = 20.0  # ood_score/in_domain outputs, relative to predict_images without them


def train_quick_run(folder: Path, quick: bool) -> Path:
    """Train small_cnn for one epoch on the embedded faces (224x224, or 32x32 when quick)."""
    from tfpipeline.cli import main

    args = ["train", "--model", "small_cnn", "--data", "faces", "--epochs", "1", "--run-dir", str(folder)]
    if quick:
        args += ["--image-size", "32", "--padding", "same"]
    with contextlib.redirect_stdout(sys.stderr):
        if main(args) != 0:
            raise SystemExit("training the benchmark run failed")
    return next(p for p in folder.iterdir() if p.is_dir())


def held_out_images(config, spec, count: int) -> np.ndarray:
    """`count` uint8 images at the model's size from the run's val/test split (cycled)."""
    from tfpipeline.export.tflite import held_out_pixels

    try:
        pixels, _ = held_out_pixels(config)
    except Exception as exc:  # the run's data is gone: random pixels time the same
        print(f"held-out images unavailable ({exc}); using random pixels", file=sys.stderr)
        pixels = np.random.default_rng(0).integers(0, 256, (count, *spec.pixel_shape), dtype=np.uint8)
    return pixels[np.arange(count) % len(pixels)]


def encode_jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def time_calls(fn, calls: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    times = np.asarray(times)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "mean_ms": round(float(times.mean()), 3),
        "min_ms": round(float(times.min()), 3),  # the floor, when other jobs share the cores
        "calls": calls,
    }


def throughput(fn, batch_size: int, batches: int) -> float:
    fn()  # warm-up (traces the batch shape)
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return round(batch_size * batches / (time.perf_counter() - start), 1)


def alternating(fns: dict, calls: int, warmup: int) -> dict:
    """Per-call milliseconds of several functions called in turn (a, b, a, b, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: np.asarray(values) for name, values in times.items()}


def ood_overhead(
    run: Path, out: Path, pixels: np.ndarray, calls: int, warmup: int, batches: int
) -> dict | None:
    """`predict_images` with and without the OOD outputs, same run, alternating calls."""
    import tensorflow as tf

    from tfpipeline.export import export_run
    from tfpipeline.ood.store import load_detector

    detector = load_detector(run)
    if detector is None:
        return None
    serve = {}
    for name, with_ood in (("with_ood", True), ("without_ood", False)):
        with contextlib.redirect_stdout(sys.stderr):
            exported = export_run(run, out=out, name=f"bench_{name}", ood=with_ood)
        serve[name] = tf.saved_model.load(str(exported.path)).signatures["predict_images"]
    one, many = tf.constant(pixels[:1].astype(np.float32)), tf.constant(pixels.astype(np.float32))

    def calling(images):
        return {k: (lambda f=f: f(images=images)["probabilities"].numpy()) for k, f in serve.items()}

    single = alternating(calling(one), calls, warmup)
    batch = alternating(calling(many), batches, 2)
    p50 = {k: float(np.percentile(v, 50)) for k, v in single.items()}
    per_image = {k: float(np.median(v)) / len(pixels) for k, v in batch.items()}
    single_pct = 100.0 * (p50["with_ood"] / p50["without_ood"] - 1.0)
    batch_pct = 100.0 * (per_image["with_ood"] / per_image["without_ood"] - 1.0)
    return {
        "method": detector.method,
        "signature": "predict_images",
        "single_image_p50_ms": {k: round(v, 3) for k, v in p50.items()},
        "single_image_min_ms": {k: round(float(v.min()), 3) for k, v in single.items()},
        "single_image_overhead_pct": round(single_pct, 1),
        "batch_ms_per_image": {k: round(v, 4) for k, v in per_image.items()},
        "batch_overhead_pct": round(batch_pct, 1),
        "goal_overhead_pct_max": GOAL_OOD_OVERHEAD_PCT,
        "met": bool(max(single_pct, batch_pct) <= GOAL_OOD_OVERHEAD_PCT),
    }


def benchmark(run: Path, calls: int, batch_size: int, batches: int, warmup: int, out: Path) -> dict:
    import keras
    import tensorflow as tf

    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.export import export_run
    from tfpipeline.export.signatures import ServingSpec

    context = open_run(run)
    spec = ServingSpec.from_context(context)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        result = export_run(run, out=out, name="bench")
    export_seconds = time.perf_counter() - start
    loaded = tf.saved_model.load(str(result.path))
    serve_bytes = loaded.signatures["serving_default"]
    serve_float = loaded.signatures["predict_images"]
    serve_uint8 = loaded.signatures["predict_images_uint8"]
    model = load_run_model(context)

    pixels = held_out_images(context.config, spec, batch_size)
    jpegs = [encode_jpeg(image) for image in pixels]
    scaled = scale(pixels, spec.scaling)
    one = {
        "bytes": tf.constant(jpegs[:1]),
        "float": tf.constant(pixels[:1].astype(np.float32)),
        "uint8": tf.constant(pixels[:1]),
        "scaled": tf.constant(scaled[:1]),
        "numpy": scaled[:1],
    }
    many = {
        "bytes": tf.constant(jpegs),
        "float": tf.constant(pixels.astype(np.float32)),
        "uint8": tf.constant(pixels),
        "scaled": tf.constant(scaled),
        "numpy": scaled,
    }

    def methods(x):
        return {
            "serving_default_bytes": lambda: serve_bytes(image_bytes=x["bytes"])["probabilities"].numpy(),
            "predict_images_float": lambda: serve_float(images=x["float"])["probabilities"].numpy(),
            "predict_images_uint8": lambda: serve_uint8(images=x["uint8"])["probabilities"].numpy(),
            "keras_model_predict": lambda: model.predict(x["numpy"], verbose=0),
            "keras_model_call": lambda: np.asarray(model(x["scaled"], training=False)),
        }

    single = {name: time_calls(fn, calls, warmup) for name, fn in methods(one).items()}
    batched = {name: throughput(fn, batch_size, batches) for name, fn in methods(many).items()}
    p50 = single["predict_images_float"]["p50_ms"]
    overhead = ood_overhead(run, out, pixels, calls, warmup, batches)
    return {
        "benchmark": "serving",
        **machine(),
        "run": str(run),
        "model": context.config.model.name,
        "image_size": list(spec.image_size),
        "channels": spec.channels,
        "jpeg_bytes_mean": int(np.mean([len(j) for j in jpegs])),
        "export_seconds": round(export_seconds, 2),
        "export_size_bytes": result.size_bytes,
        "calls": calls,
        "warmup": warmup,
        "batch_size": batch_size,
        "batches": batches,
        "single_image_latency": single,
        "batch_images_per_s": batched,
        "goal": {
            "predict_images_p50_ms_max": GOAL_P50_MS,
            "predict_images_p50_ms": p50,
            "met": bool(p50 <= GOAL_P50_MS),
            "applies": context.config.model.name == "small_cnn" and tuple(spec.image_size) == (224, 224),
        },
        "ood_overhead": overhead,
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def scale(pixels: np.ndarray, scaling: str) -> np.ndarray:
    from tfpipeline.data.decode import scale_pixels

    return scale_pixels(pixels, scaling).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder (default: train small_cnn 224 on faces)")
    parser.add_argument("--calls", type=int, default=200, help="timed single-image calls (default 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches for throughput")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny model, 20 calls, 2 batches")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    calls = min(args.calls, 20) if args.quick else args.calls
    batches = 2 if args.quick else args.batches
    warmup = 3 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="tfp-bench-serving-") as tmp:
        run = args.run or train_quick_run(Path(tmp) / "runs", args.quick)
        load_before = os.getloadavg()[0]
        result = benchmark(run, calls, args.batch_size, batches, warmup, Path(tmp) / "exports")
    # 1-minute load average before and after the timed part: well above 1 means other jobs
    # shared the two cores and the latencies are inflated.
    result["loadavg_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    result["quick"] = args.quick
    result["run_trained_by_benchmark"] = args.run is None  # then `run` was a temporary folder
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
