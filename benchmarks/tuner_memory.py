"""Memory of a long hyperparameter search: process RSS after every trial.

Runs a random search of many tiny trials (different widths, batch sizes and augmentation, so
both the model and the batching part are rebuilt every trial) and prints one JSON object: RSS
(psutil) after each trial, the growth from the first trial to the last, and the least-squares
growth per trial. A flat search stays within a few tens of MB however many trials it runs.

    .venv/bin/python benchmarks/tuner_memory.py --trials 20 --image-size 32

With `--trials-per-process N` it instead runs the same search through `tfpipeline tune`, which
hands the search over to a fresh process every N trials, and reports each process's peak RSS
(sampled every 0.2 s): the bound that hand-over puts on memory.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

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
    parser.add_argument(
        "--trials-per-process", type=int, default=None, help="measure the CLI's hand-over mode"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.trials_per_process is not None:
        print(json.dumps(measure_handover(args)))
        return 0

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
        "benchmark": "tuner_memory",
        **machine(),
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


def measure_handover(args) -> dict:
    """Peak RSS of every process of a `tfpipeline tune --trials-per-process N` search."""
    import subprocess

    import yaml

    with tempfile.TemporaryDirectory() as scratch:
        space = Path(scratch) / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE))
        command = [
            sys.executable, "-m", "tfpipeline.cli", "tune", "--model", "small_cnn", "--tuner", "random",
            "--max-trials", str(args.trials), "--epochs", str(args.epochs), "--data", args.data,
            "--image-size", str(args.image_size), "--padding", "same", "--space", str(space),
            "--directory", args.directory or scratch, "--project-name", "tuner_memory", "--overwrite",
            "--trials-per-process", str(args.trials_per_process),
        ]  # fmt: skip
        start = time.perf_counter()
        parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peaks: dict[int, float] = {}
        root = psutil.Process(parent.pid)
        while parent.poll() is None:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    rss = proc.memory_info().rss / 2**20
                    peaks[proc.pid] = max(peaks.get(proc.pid, 0.0), rss)
            except psutil.Error:
                pass  # a child ended between listing and reading
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        import pandas as pd

        trials = pd.read_csv(Path(args.directory or scratch) / "tuner_memory" / "trials.csv")
    return {
        "mode": "handover",
        "trials": len(trials),
        "statuses": trials["status"].value_counts().to_dict(),
        "trials_per_process": args.trials_per_process,
        "processes": len(peaks),
        "peak_rss_per_process_mb": [round(v, 1) for v in peaks.values()],
        "max_peak_rss_mb": round(max(peaks.values()), 1),
        "exit_code": parent.returncode,
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
