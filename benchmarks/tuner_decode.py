#!/usr/bin/env python3
"""Decode share of a hyperparameter search: how much of `tfpipeline tune` is spent on pixels.

Runs the same random search twice in this process (default: 10 trials of `small_cnn` at 128 px
on the CIPLAB train/val folders, 2 epochs each), first with an empty pixel cache (the first run
on a dataset: every image is decoded once, then stored) and then with the cache filled (every
later search, run or fold). Decoding, cache reads and cache writes are timed where they happen
(the data check's decoding pass, which also fills the cache; `PixelStore.stream` and
`aligned_from_batches` for files it did not see; header checks; `PixelStore.lookup` and
`.store`) and divided by the search's wall time.
Every trial after the data is prepared gathers its batches from the same in-memory pixels, so
trials themselves decode nothing; each copies those pixels into one TensorFlow tensor, timed as
`pixel_copy` (`pipeline._gathered_batches`, whose dataset is built lazily around that copy). The
share below is the whole search's.

    python benchmarks/tuner_decode.py [--data DIR] [--trials 10] [--image-size 128] [--epochs 2]

Prints one JSON object last, with the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, emit, machine, quiet_tensorflow  # noqa: E402

DEFAULT_DATA = SHARED / "datasets" / "real_and_fake_face"


@contextlib.contextmanager
def timed_pixel_work(seconds: dict[str, float]):
    """Add the seconds spent on pixels to `seconds`, by kind; a timed call inside another timed
    call (the data check's decoding pass fills the cache itself) counts once, for the outer."""
    from tfpipeline.data import cache_fill, check, pipeline, pixel_cache

    timed = {
        ("decode", check, "decode_failures"),  # the data check: decode, resize, fill the cache
        ("decode", pixel_cache.PixelStore, "stream"),  # files the check did not see, decoded into the store
        ("decode", cache_fill, "aligned_from_batches"),  # ... or into memory (a partly cached split)
        ("header_check", check, "inspect_header"),
        ("cache_read", pixel_cache.PixelStore, "lookup"),
        ("cache_write", pixel_cache.PixelStore, "store"),
        ("pixel_copy", pipeline, "_gathered_batches"),  # each trial's copy of the pixels into TF
    }
    saved = {(owner, attr): getattr(owner, attr) for _, owner, attr in timed}
    depth = [0]

    def timer(kind, function):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    seconds[kind] += time.perf_counter() - start

        return wrapper

    for kind, owner, attr in timed:
        setattr(owner, attr, timer(kind, saved[(owner, attr)]))
    try:
        yield
    finally:
        for (owner, attr), function in saved.items():
            setattr(owner, attr, function)


def search_once(args, label: str, directory: str) -> dict:
    from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from tfpipeline.tuning import SearchSettings, run_search

    base = RunConfig(
        data=DataConfig(data=str(args.data), image_size=(args.image_size, args.image_size)),
        model=ModelConfig(name="small_cnn", padding="same", batchnorm=True),
        train=TrainConfig(epochs=args.epochs, optimizer="adam", lr=1e-3),
    )
    settings = SearchSettings(
        tuner="random",
        max_trials=args.trials,
        directory=directory,
        project_name=label,
        overwrite=True,
        verbose=False,
    )
    trial_seconds: list[float] = []
    started: dict[str, float] = {}

    def per_trial(event) -> None:
        if event.kind == "begin":
            started[event.trial_id] = time.perf_counter()
        elif event.kind == "end" and event.trial_id in started:
            trial_seconds.append(time.perf_counter() - started.pop(event.trial_id))

    seconds: dict[str, float] = defaultdict(float)
    with timed_pixel_work(seconds):
        start = time.perf_counter()
        result = run_search(base, settings, hooks=[per_trial])
        wall = time.perf_counter() - start
    pixel_seconds = sum(seconds.values())
    report = {
        "trials": len(result.exports.trials),
        "wall_seconds": round(wall, 1),
        "trial_seconds": [round(s, 1) for s in trial_seconds],
        "decode_seconds": round(seconds["decode"], 2),
        "header_check_seconds": round(seconds["header_check"], 2),
        "cache_read_seconds": round(seconds["cache_read"], 2),
        "cache_write_seconds": round(seconds["cache_write"], 2),
        "pixel_copy_seconds": round(seconds["pixel_copy"], 2),
        "pixel_share": round(pixel_seconds / wall, 4),
    }
    print(f"{label}: {report}", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class folder or train/val layout")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder (the CIPLAB folders sit in ../shared)")
    quiet_tensorflow()
    with tempfile.TemporaryDirectory(prefix="tfp-bench-tune-") as scratch:
        os.environ["TFPIPELINE_CACHE_DIR"] = str(Path(scratch) / "cache")
        cold = search_once(args, "empty_cache", scratch)
        warm = search_once(args, "filled_cache", scratch)
    emit(
        {
            "benchmark": "tuner_decode",
            "data": str(args.data),
            "image_size": args.image_size,
            "epochs_per_trial": args.epochs,
            **machine(),
            "searches": {"empty_cache": cold, "filled_cache": warm},
            "target": {"pixel_share_below": 0.10},
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
