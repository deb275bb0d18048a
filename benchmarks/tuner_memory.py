"""Memory of a long hyperparameter search: process RSS after every trial.

Runs a random search of many tiny trials (different widths, batch sizes and augmentation, so
both the model and the batching part are rebuilt every trial) and prints one JSON object: RSS
(psutil) after each trial, the growth from the first trial to the last, and the least-squares
growth per trial. A flat search stays within a few tens of MB however many trials it runs.

    .venv/bin/python benchmarks/tuner_memory.py --trials 20 --image-size 32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

SPACE = {
    "tune_only": True,
    "filters_1": [4, 8, 16],
    "filters_2": [8, 16],
    "filters_3": [8, 16],
    "filters_4": [8, 16],
    "dense_1": [16, 32],
    "dense_2": [8, 16],
    "dense_3": [8, 16],
    "batchnorm": [False, True],
    "dropout": [False, True],
    "lr": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "optimizer": ["sgd", "adam"],
    "batch_size": [8, 16, 32],
    "flip": [False, True],
    "rotation": [0.0, 0.1],
    "zoom": [0.0, 0.1],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data", default="faces", help="any --data value (default: embedded faces)")
    parser.add_argument("--directory", default=None, help="where the search goes (default: a temp folder)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from tfpipeline.tuning import SearchSettings, run_search

    process = psutil.Process()
    rss: list[float] = []

    def measure(event) -> None:
        if event.kind == "end":  # after the tuner dropped the model and cleared the session
            gc.collect()
            rss.append(round(process.memory_info().rss / 2**20, 1))
            line = f"trial {event.trial_id}: {event.status}, RSS {rss[-1]:.1f} MB"
            print(line, file=sys.stderr, flush=True)

    base = RunConfig(
        data=DataConfig(data=args.data, image_size=(args.image_size, args.image_size)),
        model=ModelConfig(padding="same"),
        train=TrainConfig(epochs=args.epochs),
    )
    with tempfile.TemporaryDirectory() as scratch:
        settings = SearchSettings(
            tuner="random",
            max_trials=args.trials,
            directory=args.directory or scratch,
            project_name="tuner_memory",
            space=SPACE,
            overwrite=True,
            verbose=False,
        )
        start_rss = process.memory_info().rss / 2**20
        start = time.perf_counter()
        result = run_search(base, settings, hooks=[measure])
        seconds = time.perf_counter() - start
        statuses = result.exports.trials["status"].value_counts().to_dict()
    x = np.arange(len(rss))
    slope = float(np.polyfit(x[1:], rss[1:], 1)[0]) if len(rss) > 2 else float("nan")
    report = {
        "trials": len(rss),
        "statuses": statuses,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "data": args.data,
        "rss_before_search_mb": round(start_rss, 1),
        "rss_after_each_trial_mb": rss,
        "growth_first_to_last_trial_mb": round(rss[-1] - rss[0], 1) if rss else None,
        "growth_per_trial_mb_fit": round(slope, 2),
        "max_minus_min_after_trial_1_mb": round(max(rss[1:]) - min(rss[1:]), 1) if len(rss) > 1 else None,
        "seconds": round(seconds, 1),
        "project": str(Path(settings.directory) / "tuner_memory") if args.directory else None,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
