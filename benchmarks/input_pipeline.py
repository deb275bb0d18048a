#!/usr/bin/env python3
"""Input-pipeline throughput: tfpipeline's tf.data training pipeline vs the PyTorch reference.

Measures images/sec over a folder of class subfolders (default: the 600x600 JPEG faces) at the
target size, for tfpipeline's first epoch (read + decode + resize + cache fill) and a cached
epoch, and for `reference_torch.py load` with DataLoader workers 0 and 2, in the same run.
Also times the bad-file check that training runs first (cold, then from its cache).

    python benchmarks/input_pipeline.py [--data DIR] [--image-size 224] [--no-reference]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    SHARED,
    as_train_layout,
    emit,
    quiet_tensorflow,
    run_reference,
    torch_available,
    warm_page_cache,
)  # noqa: E402


def folder_split(folder: Path):
    """Every image below `folder`'s class subfolders as one Split (no train/val division)."""
    import numpy as np

    from tfpipeline.data.sources import list_class_folder
    from tfpipeline.data.split import Split

    paths, labels = [], []
    for index, class_dir in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        images, _ = list_class_folder(class_dir)
        paths += images
        labels += [index] * len(images)
    return Split(labels=np.asarray(labels, np.int32), paths=tuple(paths))


def time_epoch(dataset) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count, time.perf_counter() - start


def measure_tfpipeline(folder: Path, size: int, batch_size: int, cache: str) -> dict:
    from tfpipeline.config import DataConfig
    from tfpipeline.data.check import check_files
    from tfpipeline.data.pipeline import build_dataset

    split = folder_split(folder)
    config = DataConfig(data=str(folder), image_size=(size, size), batch_size=batch_size, cache=cache)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        check_files(split.paths, 3, (size, size), cache_dir=cache_dir)
        check_cold = time.perf_counter() - start
        start = time.perf_counter()
        check_files(split.paths, 3, (size, size), cache_dir=cache_dir)
        check_cached = time.perf_counter() - start
    dataset = build_dataset(split, config, scaling="unit", training=True, num_classes=2, label_mode="binary")
    n_first, first = time_epoch(dataset)
    n_cached, cached = time_epoch(dataset)
    # Same pipeline without reduced-scale JPEG decoding, to show what that choice buys.
    return {
        "images": n_first,
        "first_epoch_seconds": round(first, 3),
        "first_epoch_images_per_sec": round(n_first / first, 1),
        "cached_epoch_seconds": round(cached, 4),
        "cached_epoch_images_per_sec": round(n_cached / cached, 1),
        "check_cold_seconds": round(check_cold, 3),
        "check_cached_seconds": round(check_cached, 4),
        "cache": cache,
    }


def measure_full_scale_decode(folder: Path, size: int, batch_size: int) -> float:
    """First-epoch images/sec when JPEGs are always decoded at full scale (ablation)."""
    import tfpipeline.data.decode as decode

    original = decode.JPEG_RATIOS
    decode.JPEG_RATIOS = (1, 1, 1, 1)
    try:
        result = measure_tfpipeline(folder, size, batch_size, cache="none")
    finally:
        decode.JPEG_RATIOS = original
    return result["first_epoch_images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "real_and_fake_face_fullres")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--no-ablation", action="store_true", help="skip the full-scale-decode ablation")
    args = parser.parse_args()
    quiet_tensorflow()
    if not args.data.is_dir():
        sys.exit(f"input_pipeline: {args.data} is not a folder of class subfolders")
    warm_page_cache(args.data)

    result: dict = {"benchmark": "input_pipeline", "data": str(args.data), "image_size": args.image_size}
    result["tfpipeline"] = measure_tfpipeline(args.data, args.image_size, args.batch_size, cache="memory")
    if not args.no_ablation:
        result["tfpipeline"]["first_epoch_images_per_sec_full_scale_decode"] = measure_full_scale_decode(
            args.data, args.image_size, args.batch_size
        )
    reason = "skipped by --no-reference" if args.no_reference else torch_available()
    if reason:
        result["reference"] = {"skipped": reason}
    else:
        layout = as_train_layout(args.data)
        result["reference"] = {
            f"workers{w}": run_reference(
                "load", str(layout), "--workers", str(w), "--image-size", str(args.image_size)
            )
            for w in (0, 2)
        }
        ours = result["tfpipeline"]
        ref0 = result["reference"]["workers0"]["images_per_sec"]
        ref2 = result["reference"]["workers2"]["images_per_sec"]
        result["ratios"] = {
            "first_epoch_vs_workers0": round(ours["first_epoch_images_per_sec"] / ref0, 2),
            "first_epoch_vs_workers2": round(ours["first_epoch_images_per_sec"] / ref2, 2),
            "cached_epoch_vs_workers0": round(ours["cached_epoch_images_per_sec"] / ref0, 1),
            "cached_epoch_vs_workers2": round(ours["cached_epoch_images_per_sec"] / ref2, 1),
        }
        result["targets"] = {
            "first_epoch_vs_workers0": 4.0,
            "first_epoch_vs_workers2": 2.5,
            "cached_epoch_vs_workers0": 20.0,
        }
    emit(result)


if __name__ == "__main__":
    main()
