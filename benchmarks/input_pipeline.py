#!/usr/bin/env python3
"""Input-pipeline throughput: tfpipeline's tf.data pipeline vs the PyTorch reference's loader.

Every image of the given folders (default: the CIPLAB train folder at 256 px plus the 600 px
originals: 1,831 JPEGs) is read, decoded and resized to `--image-size`, measured as:

- `first_epoch`: tfpipeline with an empty pixel cache (decode everything, fill the cache);
- `second_run`: a fresh pipeline over the same files with the cache filled (what every later
  tuner trial and cross-validation fold gets: the same process);
- `second_run_new_process`: the same in a new Python process, as a user's next `tfpipeline train`
  meets it (imports not timed, like the reference's);
- `cached_epoch`: another pass over an in-memory pipeline;
- `reference_workers0` / `reference_workers2`: `reference_torch.py load` (PIL, DataLoader).

One warm-up pass of each variant is excluded; then every variant runs `--repeats` times
(default 3) in alternating order (round robin) and the median is reported, with every
repeat's figure beside it. Files are read once before timing so the page cache holds them. The
JSON carries the CPU (`cpu`), oneDNN state and library versions.

Beside images/s, `cpu_seconds` gives the CPU time (user + system, both cores) each tfpipeline
pass took, and `system_seconds` its kernel share (file reads, page faults): on a shared VM the wall
clock of one 0.3-0.5 s pass varied 1.6-2.1x between identical runs (AMD EPYC Zen 3), its CPU
time 1.15-1.25x.

    python benchmarks/input_pipeline.py [--data DIR ...] [--image-size 224] [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, emit, machine, quiet_tensorflow, run_reference, torch_available, warm_page_cache  # noqa: E402

DEFAULT_DATA = (
    SHARED / "datasets" / "real_and_fake_face" / "train",
    SHARED / "datasets" / "real_and_fake_face_fullres",
)


def combined_split(folders: list[Path]):
    """All images of the folders' class subfolders as one Split (class = subfolder name)."""
    import numpy as np

    from tfpipeline.data.sources import list_class_folder
    from tfpipeline.data.split import Split

    paths, labels, classes = [], [], {}
    for folder in folders:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            images, _ = list_class_folder(class_dir)
            paths += images
            labels += [classes.setdefault(class_dir.name, len(classes))] * len(images)
    return Split(labels=np.asarray(labels, np.int32), paths=tuple(paths))


def reference_layout(split) -> Path:
    """A temporary `train/<class>/` tree of symlinks, the layout reference_torch.py reads."""
    root = Path(tempfile.mkdtemp(prefix="tfp-bench-input-"))
    for i, (path, label) in enumerate(zip(split.paths, split.labels, strict=True)):
        target = root / "train" / f"class{label}" / f"{i:05d}{Path(path).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(path).resolve())
    return root


def cpu_times() -> tuple[float, float]:
    """This process's (user + system, system) CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


class Pass:
    """Times one pass from its creation: images/s by the wall clock, and the CPU seconds taken."""

    def __init__(self):
        self.start, (self.cpu, self.system) = time.perf_counter(), cpu_times()

    def result(self, count: int) -> dict[str, float]:
        cpu, system = cpu_times()
        return {
            "images_per_sec": count / (time.perf_counter() - self.start),
            "cpu_seconds": cpu - self.cpu,
            "system_seconds": system - self.system,
        }


class TfPipeline:
    """The tfpipeline variants over one split (each call builds what it times and returns
    :meth:`Pass.result`)."""

    def __init__(self, split, size: int, batch_size: int, folders: list[Path]):
        from tfpipeline.config import DataConfig

        self.split = split
        self.folders = [str(folder) for folder in folders]
        self.config = DataConfig(data="bench", image_size=(size, size), batch_size=batch_size)
        self.kept = None

    def _dataset(self):
        from tfpipeline.data.pipeline import build_dataset

        return build_dataset(self.split, self.config, scaling="unit", training=True, num_classes=2)

    def _epoch(self, dataset=None) -> dict[str, float]:
        """One timed pass over `dataset`, or over a new pipeline built inside the timing."""
        timing = Pass()
        dataset = self._dataset() if dataset is None else dataset
        return timing.result(sum(int(images.shape[0]) for images, _ in dataset))

    def first_epoch(self) -> dict[str, float]:
        """An empty pixel cache: decoding everything is the epoch."""
        with tempfile.TemporaryDirectory(prefix="tfp-bench-cache-") as cache:
            os.environ["TFPIPELINE_CACHE_DIR"] = cache
            return self._epoch()

    def second_run(self) -> dict[str, float]:
        """A filled pixel cache (built once, outside the timing) and a brand-new pipeline."""
        if "TFPIPELINE_BENCH_WARM" not in os.environ:
            os.environ["TFPIPELINE_BENCH_WARM"] = tempfile.mkdtemp(prefix="tfp-bench-warm-")
        os.environ["TFPIPELINE_CACHE_DIR"] = os.environ["TFPIPELINE_BENCH_WARM"]
        return self._epoch()

    def second_run_new_process(self) -> dict[str, float]:
        """`second_run` in a new process (this script with --second-run-child) on the filled cache."""
        size, batch = str(self.config.image_size[0]), str(self.config.batch_size)
        command = [sys.executable, __file__, "--second-run-child", "--image-size", size]
        command += ["--batch-size", batch, "--data", *self.folders]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"second run in a new process failed:\n{completed.stderr[-2000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    def cached_epoch(self) -> dict[str, float]:
        if self.kept is None:
            self.kept = self._dataset()
            self._epoch(self.kept)
        return self._epoch(self.kept)


def check_seconds(split, size: int) -> dict:
    """`tfpipeline data check` over the files: once cold, then the median of 3 cached passes (one
    pass is short enough for a garbage-collector pause, 0.3 s here, to be most of it)."""
    from tfpipeline.data.check import check_files

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        check_files(split.paths, 3, (size, size), cache_dir=cache_dir)
        cold = time.perf_counter() - start
        cached = []
        for _ in range(3):
            start = time.perf_counter()
            check_files(split.paths, 3, (size, size), cache_dir=cache_dir)
            cached.append(time.perf_counter() - start)
        median = statistics.median(cached)
        return {"check_cold_seconds": round(cold, 2), "check_cached_seconds": round(median, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--second-run-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_tensorflow()
    if args.second_run_child:  # the new process of `second_run_new_process`: one timed pass
        child = TfPipeline(combined_split(args.data), args.image_size, args.batch_size, args.data)
        print(json.dumps(child.second_run()))
        return
    missing = [str(d) for d in args.data if not d.is_dir()]
    if missing:
        sys.exit(f"input_pipeline: not folders of class subfolders: {', '.join(missing)}")
    for folder in args.data:
        warm_page_cache(folder)

    split = combined_split(args.data)
    ours = TfPipeline(split, args.image_size, args.batch_size, args.data)
    variants = {
        "first_epoch": ours.first_epoch,
        "second_run": ours.second_run,  # its warm-up fills the cache the new process reads
        "second_run_new_process": ours.second_run_new_process,
        "cached_epoch": ours.cached_epoch,
    }
    reason = "skipped by --no-reference" if args.no_reference else torch_available()
    if not reason:
        layout = str(reference_layout(split))
        for workers in (0, 2):
            variants[f"reference_workers{workers}"] = lambda w=workers: {
                "images_per_sec": run_reference(
                    "load", layout, "--workers", str(w), "--image-size", str(args.image_size)
                )["images_per_sec"]
            }  # its CPU time is not measured: the process's would include its imports
    for measure in variants.values():  # warm-up, not timed (also fills the second run's cache)
        measure()
    passes: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants)
        if repeat % 2:
            order.reverse()  # alternate the order, so drift does not favour one variant
        for name in order:
            passes[name].append(variants[name]())
    figures = {name: [round(p["images_per_sec"], 1) for p in runs] for name, runs in passes.items()}

    def cpu_figure(key: str) -> dict[str, dict[str, float]]:
        return {
            name: {"median": round(statistics.median(v), 3), "repeats": [round(x, 3) for x in v]}
            for name, runs in passes.items()
            if (v := [p[key] for p in runs if key in p])
        }

    result = {
        "benchmark": "input_pipeline",
        "data": [str(d) for d in args.data],
        "images": len(split),
        "image_size": args.image_size,
        **machine(),
        "images_per_sec": {name: statistics.median(values) for name, values in figures.items()},
        "repeats": figures,
        "cpu_seconds": cpu_figure("cpu_seconds"),
        "system_seconds": cpu_figure("system_seconds"),
        **check_seconds(split, args.image_size),
    }
    if reason:
        result["reference"] = {"skipped": reason}
    else:
        medians = result["images_per_sec"]
        ref0, ref2 = medians["reference_workers0"], medians["reference_workers2"]
        result["ratios"] = {
            "first_epoch_vs_workers2": round(medians["first_epoch"] / ref2, 2),
            "first_epoch_vs_workers0": round(medians["first_epoch"] / ref0, 2),
            "second_run_vs_workers0": round(medians["second_run"] / ref0, 1),
            "second_run_new_process_vs_workers0": round(medians["second_run_new_process"] / ref0, 1),
            "cached_epoch_vs_workers0": round(medians["cached_epoch"] / ref0, 1),
        }
        result["targets"] = {
            "first_epoch_vs_workers2": 1.5,
            "cached_epoch_vs_workers0": 20.0,
            "second_run_vs_workers0": 20.0,
            "second_run_new_process_vs_workers0": 20.0,
        }
    emit(result)


if __name__ == "__main__":
    main()
