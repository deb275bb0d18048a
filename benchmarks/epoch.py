#!/usr/bin/env python3
"""End-to-end training: seconds per epoch (input included) and val AUC after N epochs.

Runs `tfpipeline train` (small_cnn, the assessment's settings) and `reference_torch.py train`
with the same epochs, batch size and image size on a train/val folder, one after the other in
the same run, and reports median epoch seconds, total wall time and best val AUC of each.

    python benchmarks/epoch.py [--data DIR] [--epochs 10] [--no-reference] [-- extra train flags]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHARED,
    emit,
    issue_target,
    machine,
    run_reference,
    torch_available,
    warm_page_cache,
)


def run_tfpipeline(data: Path, epochs: int, image_size: int, extra: list[str]) -> dict:
    import pandas as pd

    with tempfile.TemporaryDirectory() as runs:
        command = [
            sys.executable, "-m", "tfpipeline.cli", "train",
            "--data", str(data),
            "--epochs", str(epochs),
            "--image-size", str(image_size),
            "--run-dir", runs,
            *extra,
        ]  # fmt: skip
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if completed.returncode != 0:
            raise RuntimeError(f"tfpipeline train failed:\n{completed.stderr[-2000:]}")
        history = pd.read_csv(next(Path(runs).glob("*/history.csv")))
    seconds = history["epoch_seconds"].tolist()
    return {
        "wall_seconds": round(wall, 1),
        "first_epoch_seconds": round(seconds[0], 2),
        "median_epoch_seconds": round(statistics.median(seconds), 2),
        "median_epoch_seconds_after_first": round(statistics.median(seconds[1:]), 2)
        if len(seconds) > 1
        else None,
        "best_val_auc": round(float(history["val_auc"].max()), 4),
        "final_val_auc": round(float(history["val_auc"].iloc[-1]), 4),
        "epochs": len(seconds),
        "flags": extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "real_and_fake_face")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("extra", nargs="*", help="extra `tfpipeline train` flags (after --)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"epoch: {args.data} needs train/ and val/ folders")
    warm_page_cache(args.data)

    result: dict = {"benchmark": "epoch", "data": str(args.data), "epochs": args.epochs, "batch_size": 32}
    result.update(machine())
    result["tfpipeline"] = run_tfpipeline(args.data, args.epochs, args.image_size, args.extra)
    reason = "skipped by --no-reference" if args.no_reference else torch_available()
    if reason:
        result["reference"] = {"skipped": reason}
    else:
        start = time.perf_counter()
        reference = run_reference(
            "train", str(args.data), "--epochs", str(args.epochs), "--image-size", str(args.image_size)
        )
        reference["wall_seconds"] = round(time.perf_counter() - start, 1)
        reference.pop("final", None)
        result["reference"] = reference
        ours = result["tfpipeline"]
        result["ratios"] = {
            "median_epoch_speedup": round(
                reference["median_epoch_seconds"] / ours["median_epoch_seconds"], 2
            ),
            "wall_speedup": round(reference["wall_seconds"] / ours["wall_seconds"], 2),
            "best_val_auc_difference": round(ours["best_val_auc"] - reference["best_val_auc"], 4),
        }
        speedup = issue_target(result["cpu"], avx2=2.0, avx512=3.0)
        result["targets"] = {"median_epoch_speedup": speedup, "best_val_auc_difference": 0.0}
    emit(result)


if __name__ == "__main__":
    main()
