#!/usr/bin/env python3
"""Time to accuracy: validation accuracy against wall-clock seconds, epoch by epoch.

Trains a recipe (default `cifar10`) and a baseline (`small_cnn` with the best options it had
before the recipe existed) on the same image folder, one after the other in the same run, each
through `tfpipeline train` in its own process, and reads back each run folder's history: the
cumulative seconds at the end of every epoch (training plus that epoch's validation pass) and the
validation accuracy then. It reports where each run first crosses the `--targets`, the final
validation accuracy with the recipe's test-time augmentation (metrics.json), training and wall
seconds, the precision used, and the CPU.

    python benchmarks/time_to_accuracy.py --data /scratch/cifar10/train
    python benchmarks/time_to_accuracy.py --data DIR --recipe cifar10 --no-baseline -- --epochs 4

The folder is a class folder (e.g. CIFAR-10's `train/<class>/*.jpg` extracted from
`../shared/datasets/cifar10/train.tar.gz`); the recipe's own split ratios hold validation out.
Never the unlabeled test images: their labels are not ours. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

# The best the registry offered for CIFAR-10 before fast_resnet (the 71 % baseline).
BASELINE = [
    "--model", "small_cnn", "--padding", "same", "--batchnorm", "--dropout", "--optimizer", "adam",
    "--schedule", "cosine", "--flip", "--translation", "0.1", "--batch-size", "128", "--image-size", "32",
    "--split-ratios", "0.9,0.1,0",
]  # fmt: skip


def train(name: str, data: Path, flags: list[str], runs: Path) -> tuple[Path, float]:
    """Train once through the CLI into a new folder under `runs`; its path and wall seconds."""
    before = {p for p in runs.iterdir() if p.is_dir()}
    command = [
        sys.executable,
        "-m",
        "tfpipeline.cli",
        "train",
        "--data",
        str(data),
        "--run-dir",
        str(runs),
        *flags,
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name}: tfpipeline train failed:\n{completed.stderr[-3000:]}")
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir() and p not in before]
    return run_dir, wall


def summarise(run_dir: Path, targets: list[float], wall: float | None = None) -> dict:
    """The accuracy curve, target crossings and totals recorded in a finished run folder."""
    import pandas as pd

    history = pd.read_csv(run_dir / "history.csv")
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = history["epoch_seconds"].cumsum()
    curve = [
        {"epoch": int(i) + 1, "seconds": round(float(s), 1), "val_accuracy": round(float(a), 4)}
        for i, (s, a) in enumerate(zip(seconds, history["val_accuracy"], strict=True))
    ]
    crosses = {}
    for target in targets:
        hit = next((point for point in curve if point["val_accuracy"] >= target), None)
        crosses[f"{target:.2f}"] = {"epoch": hit["epoch"], "seconds": hit["seconds"]} if hit else None
    return {
        "run": str(run_dir),
        "curve": curve,
        "crosses": crosses,
        "final_val_accuracy": metrics["val"]["accuracy"],  # with the run's test-time augmentation
        "best_epoch_val_accuracy": round(float(history["val_accuracy"].max()), 4),
        "val_images": metrics["val"]["num_samples"],
        "train_seconds": info.get("train_seconds"),
        "wall_seconds": None if wall is None else round(wall, 1),
        "precision": info.get("precision"),
        "recipe": info.get("recipe"),
        "trainable_params": info.get("trainable_params"),
    }


def run(name: str, data: Path, flags: list[str], targets: list[float], keep: Path | None) -> dict:
    """Train once (in `keep`, or a temporary folder) and summarise the run."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        run_dir, wall = train(name, data, flags, keep)
        return {"flags": flags, **summarise(run_dir, targets, wall)}
    with tempfile.TemporaryDirectory(prefix="tfp-tta-") as runs:
        run_dir, wall = train(name, data, flags, Path(runs))
        return {"flags": flags, **summarise(run_dir, targets, wall)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="image folder (class subfolders)")
    parser.add_argument("--recipe", default="cifar10")
    parser.add_argument("--no-baseline", action="store_true", help="skip the small_cnn baseline")
    parser.add_argument("--baseline-epochs", type=int, default=15)
    parser.add_argument("--targets", default="0.90,0.93", help="accuracies to report crossing times for")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (e.g. to predict with them)")
    parser.add_argument(
        "--from-run",
        action="append",
        default=[],
        metavar="LABEL=RUN",
        help="summarise an already finished run folder instead of training (repeatable; --data unused)",
    )
    parser.add_argument("extra", nargs="*", help="after --: more train flags for the recipe run")
    args = parser.parse_args()
    if args.from_run:
        from tfpipeline.hardware import machine_record

        targets = [float(t) for t in args.targets.split(",")]
        runs = {}
        for item in args.from_run:
            label, _, folder = item.partition("=")
            if not folder or not all(
                (Path(folder) / name).is_file() for name in ("history.csv", "metrics.json")
            ):
                raise SystemExit(f"--from-run {item}: expected LABEL=RUN with RUN a finished run folder")
            runs[label] = summarise(Path(folder), targets)
        emit(
            {
                "benchmark": "time_to_accuracy",
                "source": "existing runs",
                "machine": machine_record(),
                "runs": runs,
            }
        )
        return
    if args.data is None or not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder")
    targets = [float(t) for t in args.targets.split(",")]

    from tfpipeline.hardware import apply_onednn_default, machine_record

    apply_onednn_default()
    import tensorflow as tf

    result = {
        "benchmark": "time_to_accuracy",
        "data": str(args.data),
        "machine": machine_record(),
        "tensorflow": tf.__version__,
        "runs": {},
    }
    result["runs"][args.recipe] = run(
        args.recipe, args.data, ["--recipe", args.recipe, *args.extra], targets, args.keep
    )
    if not args.no_baseline:
        flags = [*BASELINE, "--epochs", str(args.baseline_epochs)]
        result["runs"]["small_cnn"] = run("small_cnn", args.data, flags, targets, args.keep)
    emit(result)


if __name__ == "__main__":
    main()
