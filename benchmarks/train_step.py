#!/usr/bin/env python3
"""Training compute throughput: small_cnn in Keras vs the reference network in PyTorch.

Synthetic in-memory batches (224x224, batch 32), so only forward + backward + SGD update is
measured, inside one `model.fit` call as in a training run (a warm-up epoch, then timed
epochs). tfpipeline is timed with its defaults (`default`: the precision `--precision auto` picks
for this CPU, recorded as `policy`; `float32` forces it), and with the variants the
performance issue asked to explore (XLA, bfloat16 mixed precision, steps_per_execution,
thread-pool sizes); each Keras variant runs in its own subprocess because XLA, precision
policies and thread pools are process-wide. The PyTorch side runs in benchmarks/torch_compute.py.

`--model` and `--filters` time another registered network instead, e.g. the recipes' fast_resnet
at the shapes they train on (`--model fast_resnet --filters 64,256,256 --image-size 32
--batch-size 512` for `cifar10`; `--filters 32,64,128 --image-size 80` for `fake_faces`' crops);
the PyTorch reference is small_cnn's network, so it is skipped for other models.

    python benchmarks/train_step.py [--steps 30] [--variants default,xla,...] [--no-reference]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, issue_target, machine, quiet_tensorflow, torch_available  # noqa: E402

VARIANTS = {
    "default": {"mixed_precision": "auto"},  # what a run gets: the precision chosen for this CPU
    "float32": {"mixed_precision": "float32"},
    "onednn_off": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "onednn_on": {"env": {"TF_ENABLE_ONEDNN_OPTS": "1"}},
    "xla": {"jit_compile": True},
    "bf16": {"mixed_precision": "mixed_bfloat16"},
    "spe8": {"steps_per_execution": 8},
    "threads_1x2": {"inter_op": 1, "intra_op": 2},
    "threads_2x2": {"inter_op": 2, "intra_op": 2},
    "avx2_tf_default": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "avx2_tfpipeline": {"env": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}},
}
DEFAULT_VARIANTS = ("default", "float32", "onednn_off", "onednn_on", "xla", "bf16", "threads_1x2")
AVX2_VARIANTS = ("avx2_tf_default", "avx2_tfpipeline")
TORCH_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
KERNEL_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def measure_keras(options: dict, args, warmup: int) -> dict:
    """Images/sec of `model.fit` over an in-memory dataset (runs inside a fresh process)."""
    steps, batch_size, size = args.steps, args.batch_size, args.image_size
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

    policy = options.get("mixed_precision", "float32")
    if policy == "auto":  # tfpipeline's choice for this CPU, as `train --precision auto` makes it
        from tfpipeline.hardware import choose_precision, cpu_info, visible_gpus

        policy = choose_precision("auto", cpu_info(), visible_gpus()).policy
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(101)
    model = build_model(ModelConfig(name=args.model, filters=args.filters), (size, size, 3), 2)
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
    # One fit call, as a training run makes: its first epoch (tracing, compiling) is the warm-up,
    # the epochs after it are timed. A second fit call on the same model (this benchmark's timing
    # until 2026-11-23) ran at one fixed lower speed in half or more of the calls on 2 cores of
    # an AMD EPYC Zen 3, its cores partly idle: 46.9 img/s against 70-79 here. Inside one fit,
    # with or without validation between epochs, that never happened (52 epochs).
    chunk = max(warmup, spe)  # steps per epoch, a multiple of steps_per_execution
    epochs = 1 + max(1, round(steps / chunk))
    ends: list[float] = []
    ends_epochs = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter())
    )
    model.fit(data, steps_per_epoch=chunk, epochs=epochs, verbose=0, callbacks=[ends_epochs])
    timed_steps = chunk * (epochs - 1)
    seconds = ends[-1] - ends[0]
    return {
        "images_per_sec": round(timed_steps * batch_size / seconds, 1),
        "steps": timed_steps,
        "policy": policy,
    }


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    env.update(extra)
    return env


def run_variant(name: str, args) -> dict | None:
    """Images/s and precision of one variant, in a fresh process (XLA, precision, threads and
    kernels are process-wide)."""
    command = [
        sys.executable, __file__, "--measure-variant", name, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
        "--model", args.model, "--filters", ",".join(map(str, args.filters)),
    ]  # fmt: skip
    env = VARIANTS[name].get("env")
    if env is None:  # tfpipeline's own default for this CPU
        env = {}
    completed = subprocess.run(command, capture_output=True, text=True, env=_env(env), check=False)
    if completed.returncode != 0:
        print(f"train_step: {name} failed: {completed.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_torch(args, avx2: bool) -> dict:
    command = [
        sys.executable, str(Path(__file__).with_name("torch_compute.py")),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--image-size", str(args.image_size),
    ]  # fmt: skip
    env = _env(TORCH_AVX2_ENV if avx2 else {})
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="small_cnn", help="registry name (default small_cnn)")
    parser.add_argument(
        "--filters",
        type=lambda text: tuple(int(v) for v in text.split(",") if v),
        default=(),
        help="conv widths, e.g. 64,256,256 (default: the model's own)",
    )
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"subset of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--emulate-avx2", action="store_true", help="also measure an AVX2-only CPU (see above)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--measure-variant", help=argparse.SUPPRESS)  # internal: one variant, in-process
    args = parser.parse_args()
    if args.measure_variant:
        options = {k: v for k, v in VARIANTS[args.measure_variant].items() if k != "env"}
        print(json.dumps(measure_keras(options, args, 3)))
        return
    names = [n for n in args.variants.split(",") if n]
    if args.emulate_avx2:
        names += [n for n in AVX2_VARIANTS if n not in names]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"train_step: unknown variant(s) {', '.join(unknown)}")
    if args.model != "small_cnn":
        from tfpipeline.models import MODELS  # loads Keras: only when another model is asked for

        if args.model not in MODELS:
            sys.exit(f"train_step: unknown --model '{args.model}'; choose from {', '.join(MODELS)}")
    if args.no_reference:
        reason = "skipped by --no-reference"
    elif args.model != "small_cnn" or args.filters:
        reason = "the PyTorch reference is small_cnn's network with its own widths"
    else:
        reason = torch_available()
    jobs = {name: (lambda n=name: run_variant(n, args)) for name in names}
    if not reason:
        jobs["torch"] = lambda: run_torch(args, avx2=False)
        if args.emulate_avx2:
            jobs["torch_avx2"] = lambda: run_torch(args, avx2=True)
    figures: dict[str, list] = {name: [] for name in jobs}
    for repeat in range(args.repeats):
        for name in list(jobs) if repeat % 2 == 0 else list(jobs)[::-1]:
            figures[name].append(jobs[name]())

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    result: dict = {
        "benchmark": "train_step", "model": args.model, "filters": list(args.filters),
        "image_size": args.image_size, "batch_size": args.batch_size, **machine(),
        "tfpipeline": {
            name: {
                "images_per_sec": median([run and run["images_per_sec"] for run in figures[name]]),
                "repeats": [run and run["images_per_sec"] for run in figures[name]],
                "policy": next((run["policy"] for run in figures[name] if run), None),
            }
            for name in names
        },
    }  # fmt: skip
    if reason:
        result["reference"] = {"skipped": reason}
        emit(result)
        return
    for key in [k for k in ("torch", "torch_avx2") if k in figures]:
        runs = figures[key]
        result["reference" if key == "torch" else "reference_avx2"] = {
            layout: {"images_per_sec": median([r[f"{layout}_images_per_sec"] for r in runs]),
                     "repeats": [r[f"{layout}_images_per_sec"] for r in runs]}
            for layout in ("default", "channels_last")
        }  # fmt: skip
    ratios, targets = {}, {}
    best = max(v["images_per_sec"] for v in result["reference"].values())
    ours = result["tfpipeline"].get("default", {}).get("images_per_sec")
    if ours:
        ratios["default_vs_faster_torch_layout"] = round(ours / best, 2)
        targets["default_vs_faster_torch_layout"] = issue_target(result["cpu"], avx2=1.5, avx512=2.5)
    float32 = result["tfpipeline"].get("float32", {}).get("images_per_sec")
    if float32:
        ratios["float32_vs_faster_torch_layout"] = round(float32 / best, 2)
    if "reference_avx2" in result and result["tfpipeline"].get("avx2_tfpipeline", {}).get("images_per_sec"):
        best_avx2 = max(v["images_per_sec"] for v in result["reference_avx2"].values())
        for name in AVX2_VARIANTS:
            ratios[f"{name}_vs_faster_torch_layout_avx2"] = round(
                result["tfpipeline"][name]["images_per_sec"] / best_avx2, 2
            )
        targets["avx2_tfpipeline_vs_faster_torch_layout_avx2"] = 1.5
    result["ratios"], result["targets"] = ratios, targets
    emit(result)


if __name__ == "__main__":
    main()
