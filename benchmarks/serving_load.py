#!/usr/bin/env python3
"""Serving under hostile load: is memory bounded, is every valid request still answered right?

Loads an exported SavedModel in this process (as TF Serving would) and has --threads threads
call it --requests times, in process (nothing goes over a network), with a seeded mix of valid
JPEGs and PNGs (one image, or a batch of 8), corrupt files, non-images, decompression bombs
(PNG 20,000 x 20,000, JPEG 30,000 x 30,000, GIF 20,000 x 20,000), an image over max_bytes and
batches over max_batch (bytes and uint8 pixels). Prints one JSON object: requests/s, p50/p99
latency of valid requests and whether each matched the reference (the same payload served
alone before the load), each invalid kind's error and latency, and RSS (before the load, its
peak during the load, the process's peak).

    python benchmarks/serving_load.py [--run RUN | --export DIR] [--requests 2000] [--threads 8]
    python benchmarks/serving_load.py --export DIR --single png_bomb   # one request: s and RSS

Without --export, RUN (default: small_cnn trained 1 epoch on the embedded faces at 224x224) is
exported with default limits in a child process, so this process's peak RSS is the serving
process's own. `--single KIND` times one request of KIND against any export, e.g. one written
by an older tfpipeline without limits (the "before" of the bomb). Bounded: --requests calls at
most, none started after --time-limit seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil

MB = 1 << 20
GOAL_PEAK_RSS_MB = 1024
VALID = {"valid_jpeg": 25, "valid_png": 25, "valid_batch8": 10}
INVALID = [
    *("corrupt_jpeg", "corrupt_png", "truncated_header", "not_an_image", "empty"),
    *("png_bomb", "jpeg_bomb", "gif_bomb", "oversized_bytes", "oversized_batch", "oversized_uint8_batch"),
]


def memory() -> tuple[int, int]:
    """(RSS, its anonymous part) in bytes. The rest of RSS is file-backed: mostly TensorFlow's
    shared libraries (~420 MB), which no request changes."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["RssAnon"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: RSS only
        rss = psutil.Process().memory_info().rss
        return rss, rss


class RssSampler(threading.Thread):
    """Samples RSS every 5 ms; `peak` and `peak_anon` are the highest seen since start()."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.peak_anon, self.stop, self.samples = 0, 0, threading.Event(), []

    def sample(self) -> None:
        rss, anon = memory()
        self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
        self.samples.append(rss)

    def quarters(self) -> list[float]:
        """Peak RSS (MB) in each quarter of the sampled time: flat when memory is bounded."""
        chunks = np.array_split(np.asarray(self.samples or [0]), 4)
        return [round(float(chunk.max()) / MB, 1) if chunk.size else None for chunk in chunks]

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.005)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()
        self.sample()


def cli(*args: str) -> str:
    """Run `tfpipeline ARGS` in a child process; its stdout."""
    command = [sys.executable, "-m", "tfpipeline.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode:
        raise SystemExit(f"tfpipeline {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def prepare_export(run: Path | None, folder: Path) -> tuple[Path, Path | None]:
    """(export folder, run folder): `run` (or a 1-epoch small_cnn at 224 on faces) exported."""
    if run is None:
        cli("train", "--model", "small_cnn", "--data", "faces", "--epochs", "1", "--run-dir", str(folder))
        run = next(p for p in folder.iterdir() if p.is_dir())
    cli("export", str(run), "--out", str(folder / "exports"), "--name", "load")
    return folder / "exports" / "load" / "1", run


def encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, fmt)
    return buffer.getvalue()


def payloads(meta: dict, count: int = 16) -> dict[str, list]:
    """Kind -> list of (signature, input name, tensor) requests to draw from.

    The tensors are made once, before any timing: what is measured is the model's work and
    memory, not the load generator's copies of the request bodies.
    """
    import tensorflow as tf

    from tfpipeline.export.hostile import gif_bomb, jpeg_bomb, png_bomb

    limits, (h, w) = meta["limits"], meta["input"]["image_size"]
    rng = np.random.default_rng(0)
    images = [(rng.random((h, w, 3)) * 40 + np.linspace(0, 200, w)[None, :, None]).astype(np.uint8)]
    images += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count - 1)]
    jpegs, pngs = [encode(i, "JPEG") for i in images], [encode(i, "PNG") for i in images]
    broken_png = bytearray(pngs[0])
    broken_png[60:80] = bytes(20)  # inside IDAT: a CRC and zlib error

    def one(data: bytes) -> tuple:
        return ("serving_default", "image_bytes", tf.constant([data]))

    big = jpegs[0] + bytes(limits["max_bytes"] + 1 - len(jpegs[0]))
    return {
        "valid_jpeg": [one(j) for j in jpegs],
        "valid_png": [one(p) for p in pngs],
        "valid_batch8": [("serving_default", "image_bytes", tf.constant(jpegs[i : i + 8]))
                         for i in range(0, count, 8)],  # fmt: skip
        "corrupt_jpeg": [one(jpegs[0][: len(jpegs[0]) * 2 // 3])],
        "corrupt_png": [one(bytes(broken_png))],
        "truncated_header": [one(jpegs[0][:40])],
        "not_an_image": [one(b"this is a text file, not an image\n" * 30)],
        "empty": [one(b"")],
        "png_bomb": [one(png_bomb(20_000, 20_000))],
        "jpeg_bomb": [one(jpeg_bomb(30_000, 30_000))],
        "gif_bomb": [one(gif_bomb(20_000, 20_000))],
        "oversized_bytes": [one(big)],
        "oversized_batch": [("serving_default", "image_bytes",
                             tf.constant(jpegs * (limits["max_batch"] // count + 1)))],
        "oversized_uint8_batch": [("predict_images_uint8", "images",
                                   tf.zeros((limits["max_batch"] + 1, h, w, 3), tf.uint8))],
    }  # fmt: skip


def call(model, request: tuple) -> tuple[np.ndarray | None, str | None]:
    """(probabilities, None) or (None, the error's reason)."""
    import tensorflow as tf

    from tfpipeline.export.signatures import error_reason

    signature, name, tensor = request
    try:
        return model.signatures[signature](**{name: tensor})["probabilities"].numpy(), None
    except tf.errors.InvalidArgumentError as exc:
        return None, error_reason(exc.message)


def payload_bytes(request: tuple) -> int:
    tensor = request[2]
    if tensor.dtype.name != "string":
        return int(tensor.numpy().nbytes)
    return int(sum(len(item) for item in tensor.numpy()))


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def single(model, pool: dict, kind: str) -> dict:
    """One request of `kind` after a warm-up: seconds, outcome and RSS growth."""
    call(model, pool["valid_jpeg"][0])
    before, before_anon = memory()
    with RssSampler() as rss:
        start = time.perf_counter()
        probs, error = call(model, pool[kind][0])
        seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "payload_bytes": payload_bytes(pool[kind][0]),
        "seconds": round(seconds, 3),
        "outcome": "refused" if error else "answered",
        "error": error,
        "rss_before_mb": round(before / MB, 1),
        "rss_peak_mb": round(rss.peak / MB, 1),
        "rss_growth_mb": round((rss.peak - before) / MB, 1),
        "rss_anon_before_mb": round(before_anon / MB, 1),
        "rss_anon_peak_mb": round(rss.peak_anon / MB, 1),
    }


def load(model, pool: dict, requests: int, threads: int, time_limit: float, seed: int, kinds: list) -> dict:
    """The mixed load of `kinds` (see the module docstring); its measurements."""
    weights = {**VALID, **dict.fromkeys(INVALID, 40 / len(INVALID))}
    weights = {kind: weight for kind, weight in weights.items() if kind in kinds}
    rng = random.Random(seed)
    plan = rng.choices(list(weights), weights=list(weights.values()), k=requests)
    plan = [(kind, rng.randrange(len(pool[kind]))) for kind in plan]
    reference = {(k, i): call(model, pool[k][i])[0] for k in VALID for i in range(len(pool[k]))}
    results: list[tuple] = []
    lock, cursor, deadline = threading.Lock(), iter(plan), time.perf_counter() + time_limit

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                item = next(cursor, None)
            if item is None:
                return
            start = time.perf_counter()
            probs, error = call(model, pool[item[0]][item[1]])
            elapsed = (time.perf_counter() - start) * 1000
            correct = None
            if item[0] in VALID:
                correct = probs is not None and np.allclose(probs, reference[item], atol=1e-5)
            with lock:
                results.append((item[0], elapsed, error, correct))

    rss_before, anon_before = memory()
    with RssSampler() as rss:
        start = time.perf_counter()
        pool_threads = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool_threads:
            thread.start()
        for thread in pool_threads:
            thread.join()
        seconds = time.perf_counter() - start
    by_kind: dict[str, list] = defaultdict(list)
    for kind, elapsed, error, correct in results:
        by_kind[kind].append((elapsed, error, correct))
    valid = [r for k in VALID for r in by_kind[k]]
    invalid = {}
    for kind in (k for k in INVALID if k in kinds):
        rows = by_kind[kind]
        errors = sorted({e for _, e, _ in rows if e})
        invalid[kind] = {
            "count": len(rows),
            "refused": sum(e is not None for _, e, _ in rows),
            "p50_ms": percentile([t for t, _, _ in rows], 50),
            "max_ms": round(max((t for t, _, _ in rows), default=0.0), 2),
            "error": errors[0] if len(errors) == 1 else errors,
        }
    return {
        "requests": {"planned": requests, "completed": len(results), "time_limit_s": time_limit,
                     "stopped_by_time_limit": len(results) < requests, "threads": threads},
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(results) / seconds, 1),
        "valid": {
            "count": len(valid),
            "by_kind": {k: len(by_kind[k]) for k in VALID},
            "answered_correctly": sum(bool(c) for _, _, c in valid),
            "errors": sorted({e for _, e, _ in valid if e}),
            "p50_ms": percentile([t for t, _, _ in valid], 50),
            "p99_ms": percentile([t for t, _, _ in valid], 99),
        },
        "invalid": invalid,
        "rss_mb": {"before_load": round(rss_before / MB, 1), "peak_during_load": round(rss.peak / MB, 1),
                   "growth_during_load": round((rss.peak - rss_before) / MB, 1),
                   "anon_before_load": round(anon_before / MB, 1),
                   "anon_peak_during_load": round(rss.peak_anon / MB, 1),
                   "peak_by_quarter_of_load": rss.quarters()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder to export (default: train small_cnn)")
    parser.add_argument("--export", type=Path, help="an existing SavedModel export to load instead")
    parser.add_argument("--requests", type=int, default=2000, help="calls in all (default 2000)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds; no call starts after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", choices=[*VALID, *INVALID], help="time one request of this kind")
    parser.add_argument(
        "--kinds", help=f"comma-separated subset of the mix (default all: {','.join([*VALID, *INVALID])})"
    )
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else [*VALID, *INVALID]
    if set(kinds) - {*VALID, *INVALID}:
        parser.error(f"--kinds: unknown {', '.join(sorted(set(kinds) - {*VALID, *INVALID}))}")
    rss_start = memory()[0]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tfp-bench-load-") as tmp:
        export, run = (args.export, args.run) if args.export else prepare_export(args.run, Path(tmp))
        import tensorflow as tf

        from tfpipeline.hardware import machine_record

        meta_file = Path(export) / "assets" / "metadata.json"
        meta = json.loads(meta_file.read_text())
        meta.setdefault("limits", {"max_bytes": 20_000_000, "max_batch": 256})  # an export without limits
        model = tf.saved_model.load(str(export))
        rss_loaded = memory()[0]
        pool = payloads(meta)
        load_before = os.getloadavg()[0]
        if args.single:
            result = {"benchmark": "serving_load_single", **single(model, pool, args.single)}
        else:
            measured = load(model, pool, args.requests, args.threads, args.time_limit, args.seed, kinds)
            result = {"benchmark": "serving_load", "kinds": kinds, **measured}
            result["rss_mb"] = {"python_start": round(rss_start / MB, 1),
                                "tensorflow_imported_model_loaded": round(rss_loaded / MB, 1),
                                **result["rss_mb"]}  # fmt: skip
            result["goal"] = {
                "peak_rss_mb_max": GOAL_PEAK_RSS_MB,
                "peak_rss_met": result["rss_mb"]["peak_during_load"] < GOAL_PEAK_RSS_MB,
                "all_valid_correct": result["valid"]["answered_correctly"] == result["valid"]["count"],
                "every_invalid_refused": all(v["refused"] == v["count"] for v in result["invalid"].values()),
            }
        result.update(
            export=str(export),
            run=str(run) if run else None,
            model=meta["model"]["name"],
            image_size=meta["input"]["image_size"],
            limits=meta.get("limits"),
            process_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            tensorflow=tf.__version__,
            loadavg_1min={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            **machine_record(),
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
