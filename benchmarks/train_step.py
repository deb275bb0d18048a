#!/usr/bin/env python3
"""Training compute throughput: small_cnn in Keras vs the reference network in PyTorch.

Synthetic in-memory batches (224x224, batch 32), so only forward + backward + SGD update is
measured. tfpipeline is timed with its default compile settings and with the variants the
performance issue asked to explore (XLA, bfloat16 mixed precision, steps_per_execution,
thread-pool sizes); each Keras variant runs in its own subprocess because XLA, precision
policies and thread pools are process-wide. The PyTorch side runs in benchmarks/torch_compute.py.

    python benchmarks/train_step.py [--steps 30] [--variants default,xla,...] [--no-reference]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, quiet_tensorflow, torch_available  # noqa: E402

VARIANTS = {
    "default": {},
    "xla": {"jit_compile": True},
    "bf16": {"mixed_precision": "mixed_bfloat16"},
    "spe8": {"steps_per_execution": 8},
    "threads_1x2": {"inter_op": 1, "intra_op": 2},
    "threads_2x2": {"inter_op": 2, "intra_op": 2},
}


def measure_keras(options: dict, steps: int, batch_size: int, size: int, warmup: int) -> dict:
    """Images/sec of `model.fit` over an in-memory dataset (runs inside a fresh process)."""
    quiet_tensorflow()
    import tensorflow as tf

    if "inter_op" in options:
        tf.config.threading.set_inter_op_parallelism_threads(options["inter_op"])
        tf.config.threading.set_intra_op_parallelism_threads(options["intra_op"])
    import keras

    from tfpipeline.config import ModelConfig, TrainConfig
    from tfpipeline.models import build_model
    from tfpipeline.training.compile import make_loss, make_optimizer
    from tfpipeline.training.metrics import training_metrics

    if "mixed_precision" in options:
        keras.mixed_precision.set_global_policy(options["mixed_precision"])
    keras.utils.set_random_seed(101)
    model = build_model(ModelConfig(), (size, size, 3), 2)
    spe = options.get("steps_per_execution", 1)
    model.compile(
        optimizer=make_optimizer(TrainConfig(), steps),
        loss=make_loss(2, 0.0),
        metrics=training_metrics(2, threshold=0.5),
        jit_compile=options.get("jit_compile", False),
        steps_per_execution=spe,
    )
    x = tf.random.uniform((batch_size, size, size, 3), seed=1)
    y = tf.cast(tf.random.uniform((batch_size, 1), seed=2) > 0.5, tf.float32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    # Warm-up traces and compiles; then a timed fit with the same compiled function.
    model.fit(data, steps_per_epoch=max(warmup, spe), epochs=1, verbose=0)
    timed_steps = max(spe, steps - steps % spe)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=timed_steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"images_per_sec": round(timed_steps * batch_size / seconds, 1), "steps": timed_steps}


def run_variant(name: str, args) -> dict:
    """Measure one variant in a fresh process (XLA, precision and threads are process-wide)."""
    command = [
        sys.executable, __file__, "--measure-variant", name, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--measure-variant", help=argparse.SUPPRESS)  # internal: one variant, in-process
    args = parser.parse_args()
    if args.measure_variant:
        print(
            json.dumps(
                measure_keras(VARIANTS[args.measure_variant], args.steps, args.batch_size, args.image_size, 3)
            )
        )
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"train_step: unknown variant(s) {', '.join(unknown)}")

    result: dict = {"benchmark": "train_step", "image_size": args.image_size, "batch_size": args.batch_size}
    result["tfpipeline"] = {name: run_variant(name, args) for name in names}
    reason = "skipped by --no-reference" if args.no_reference else torch_available()
    if reason:
        result["reference"] = {"skipped": reason}
    else:
        completed = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("torch_compute.py")),
                "--steps", str(args.steps),
                "--batch-size", str(args.batch_size),
                "--image-size", str(args.image_size),
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        reference = json.loads(completed.stdout.strip().splitlines()[-1])
        result["reference"] = reference
        best_torch = max(reference["default_images_per_sec"], reference["channels_last_images_per_sec"])
        ours = result["tfpipeline"].get("default", {}).get("images_per_sec")
        if ours:
            result["ratios"] = {"default_vs_faster_torch_layout": round(ours / best_torch, 2)}
            result["targets"] = {"default_vs_faster_torch_layout": 2.5}
    emit(result)


if __name__ == "__main__":
    main()
