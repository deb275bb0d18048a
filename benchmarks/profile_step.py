#!/usr/bin/env python3
"""Where a training step spends its time: TensorFlow profiler top ops, per kernel setting.

Profiles `--steps` steps of a model's `fit` (default small_cnn, 224x224, batch 32, synthetic
data) with `tf.profiler`, reads the trace's framework op statistics (the profiler's own tool,
through the `xprof` package) and prints each setting's top ops by self time (by op type).

Settings (each in its own process, environment set before TensorFlow loads):

- `onednn_off`: `TF_ENABLE_ONEDNN_OPTS=0`, TensorFlow's Eigen kernels: what TensorFlow runs
  by default on CPUs without AVX512-VNNI/BF16/AMX, i.e. every AVX2-only CPU;
- `onednn_on`: `TF_ENABLE_ONEDNN_OPTS=1`, oneDNN kernels at this CPU's widest ISA;
- `onednn_avx2`: oneDNN limited to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`): on an AVX-512 machine this
  emulates what tfpipeline's oneDNN default gives an AVX2-only CPU (same kernels, this CPU's
  clock and caches).

`--primitives` reports oneDNN's own account instead (`ONEDNN_VERBOSE=1`): the median time of
each primitive per step (convolution forward / backward-data / backward-weights of each layer's
shape, pooling, ...), its share of the step, and for convolutions the rate in GFLOP/s, which shows
which pass of which layer runs below what the CPU does elsewhere. The log goes to a file, where
logging every call cost nothing measurable (small_cnn on an AMD Zen 4: 125.8 images/s logged, the
same as the profiler's unlogged run).

`--inter-op N` sets TensorFlow's inter-op threads in the measured process (0: TensorFlow's default,
one per core). `--primitives` runs with 1 unless told otherwise: with more, TensorFlow runs
independent ops at once, such as a layer's backward-data and backward-weights convolutions, each
on the same two-thread pool, and every call's logged time then includes the other's share of the
cores (small_cnn on an AMD Zen 4, its two largest layers: 31-48 ms per backward call with the
default against 16-26 ms with 1, while the unlogged step runs at the same rate either way). The
JSON records the setting, the step's wall time and the part of it outside oneDNN's primitives.

    python benchmarks/profile_step.py [--model small_cnn] [--settings onednn_off,onednn_on] [--top 8]
    python benchmarks/profile_step.py --primitives [--settings onednn_on] [--inter-op 1]

Needs `pip install xprof` (benchmark-only) without `--primitives`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine  # noqa: E402

SETTINGS = {
    "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "onednn_on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "onednn_avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def profile(
    model_name: str, size: int, batch: int, steps: int, top: int, trace: bool = True, inter_op: int = 0
) -> dict:
    """Inside a fresh process: images/s of `steps` steps, and the top ops of their profile
    (without `trace`: only the rate, for `--primitives`, whose log is the process's output).
    `inter_op`: TensorFlow's inter-op threads (0: its default)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if inter_op:  # before any op runs: the pools are created with the first one
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)

    from tfpipeline.config import ModelConfig, TrainConfig
    from tfpipeline.models import build_model
    from tfpipeline.training.compile import make_loss, make_optimizer

    options = {"filters": (64, 256, 256)} if model_name == "fast_resnet" else {}
    classes = 10 if model_name == "fast_resnet" else 2
    model = build_model(ModelConfig(name=model_name, **options), (size, size, 3), classes)
    model.compile(optimizer=make_optimizer(TrainConfig(), steps), loss=make_loss(classes, 0.0))
    x = tf.random.uniform((batch, size, size, 3), seed=1)
    labels = tf.random.uniform((batch,), 0, classes, tf.int32, seed=2)
    y = tf.cast(labels[:, None] % 2, tf.float32) if classes == 2 else tf.one_hot(labels, classes)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up, not timed
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    rate = steps * batch / (time.perf_counter() - start)
    if not trace:  # --primitives: every step so far is in oneDNN's log
        return {"images_per_sec": round(rate, 1), "steps_logged": 3 + steps}
    logdir = tempfile.mkdtemp(prefix="tfp-profile-")
    tf.profiler.experimental.start(logdir)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    tf.profiler.experimental.stop()
    return {"images_per_sec": round(rate, 1), "top_ops": top_ops(logdir, top)}


def top_ops(logdir: str, top: int) -> list[dict]:
    """Self time by op type from the profile in `logdir` (host ops, which is all a CPU has)."""
    from xprof.convert import raw_to_tool_data

    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    data, _ = raw_to_tool_data.xspace_to_tool_data([path], "framework_op_stats", {})
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    by_type: dict[str, float] = {}
    for row in table["rows"]:
        values = dict(zip(columns, (cell.get("v") if cell else None for cell in row["c"]), strict=True))
        if values.get("type") in ("IDLE", None):
            continue
        by_type[values["type"]] = by_type.get(values["type"], 0.0) + float(values["total_self_time"] or 0.0)
    total = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda item: -item[1])[:top]
    return [{"op": op, "self_ms": round(us / 1000, 1), "share": round(us / total, 3)} for op, us in ranked]


def conv_flops(problem: str) -> float | None:
    """Multiply-adds x 2 of a oneDNN convolution problem (`mb32_ic16oc32_ih111oh109kh3..._iw111
    ow109kw3...`): the same for forward, backward-data and backward-weights; None for others."""
    sizes = dict(re.findall(r"(mb|ic|oc|oh|ow|kh|kw)(\d+)", problem))
    if not {"mb", "ic", "oc", "oh", "ow", "kh", "kw"} <= sizes.keys():
        return None
    mb, ic, oc, oh, ow, kh, kw = (int(sizes[k]) for k in ("mb", "ic", "oc", "oh", "ow", "kh", "kw"))
    return 2.0 * mb * oc * oh * ow * ic * kh * kw


def primitive_times(lines: list[str], steps: int, top: int) -> dict:
    """oneDNN's verbose log (`ONEDNN_VERBOSE=1`) of `steps` training steps -> each distinct
    primitive (kind, implementation, pass, problem): the median time of one call (which skips the
    first, cold calls), its calls, its time per step (median x calls / steps) and share of the
    step, ranked by time per step; `step_ms` is the sum over all primitives."""
    calls: dict[tuple[str, str, str, str], list[float]] = {}
    for line in lines:
        fields = line.strip().split(",")
        if len(fields) < 10 or fields[0] != "onednn_verbose" or "exec" not in fields[:4]:
            continue
        at = fields.index("exec")
        kind, implementation, direction = fields[at + 2 : at + 5]
        try:
            milliseconds = float(fields[-1])
        except ValueError:
            continue
        calls.setdefault((kind, implementation, direction, fields[-2]), []).append(milliseconds)
    per_step = {key: statistics.median(times) * len(times) / steps for key, times in calls.items()}
    step_ms = sum(per_step.values())
    rows = []
    for key, step_share in sorted(per_step.items(), key=lambda item: -item[1])[:top]:
        kind, implementation, direction, problem = key
        median = statistics.median(calls[key])
        row = {"kind": kind, "implementation": implementation, "pass": direction, "problem": problem,
               "median_ms": round(median, 3), "calls": len(calls[key]),
               "per_step_ms": round(step_share, 3), "share": round(step_share / step_ms, 3)}  # fmt: skip
        flops = conv_flops(problem) if kind == "convolution" else None
        if flops and median > 0:
            row["gflops_per_sec"] = round(flops / median / 1e6, 1)
        rows.append(row)
    return {"step_ms": round(step_ms, 2), "primitives": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small_cnn", choices=("small_cnn", "fast_resnet"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument(
        "--primitives", action="store_true", help="oneDNN's per-primitive times (ONEDNN_VERBOSE) instead"
    )
    parser.add_argument(
        "--inter-op",
        type=int,
        help="TensorFlow's inter-op threads, 0 for its default (default: 1 with --primitives, else 0)",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one setting, in-process
    args = parser.parse_args()
    inter_op = (1 if args.primitives else 0) if args.inter_op is None else args.inter_op
    if inter_op < 0:
        parser.error(f"--inter-op must be 0 (TensorFlow's default) or more, not {inter_op}")
    if args.measure:
        trace = not args.primitives
        sizes = (args.model, args.image_size, args.batch_size, args.steps, args.top)
        print(json.dumps(profile(*sizes, trace, inter_op)))
        return
    if not args.primitives and importlib.util.find_spec("xprof") is None:
        sys.exit("profile_step: needs the profiler's converter: pip install xprof (benchmark-only)")
    result = {"benchmark": "profile_step", "model": args.model, "image_size": args.image_size,
              "batch_size": args.batch_size, **machine(), "settings": {}}  # fmt: skip
    for name in args.settings.split(","):
        env = {
            k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")
        }
        env.update(SETTINGS[name])
        if args.primitives:
            env["ONEDNN_VERBOSE"] = "1"
        command = [
            sys.executable, __file__, "--measure", name, "--model", args.model, "--steps", str(args.steps),
            "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--top", str(args.top), "--inter-op", str(inter_op),
            *(["--primitives"] if args.primitives else []),
        ]  # fmt: skip
        # Output to a file, not a pipe: oneDNN flushes every logged call, and through a pipe that
        # halved the step's rate (2 cores, AMD Zen 4), to a file it cost little.
        with tempfile.TemporaryFile("w+") as stdout:
            done = subprocess.run(
                command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, check=False
            )
            stdout.seek(0)
            output = stdout.read().strip().splitlines()
        if done.returncode != 0:
            result["settings"][name] = {
                "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
            }
            continue
        measured = {"env": SETTINGS[name], "inter_op_threads": inter_op or "default"}
        measured.update(json.loads(output[-1]))
        result["settings"][name] = measured
        if args.primitives:
            if name == "onednn_off":
                measured["primitives"] = "none: oneDNN is off"
                continue
            measured["images_per_sec_note"] = "with every oneDNN call logged"
            measured.update(primitive_times(output, measured.pop("steps_logged"), args.top))
            # What the step takes on the clock, and how much of it no oneDNN primitive accounts for
            # (TensorFlow's own ops, such as ReluGrad and the optimizer's updates); negative when
            # calls overlapped (more than one inter-op thread).
            measured["wall_step_ms"] = round(1000 * args.batch_size / measured["images_per_sec"], 2)
            measured["outside_primitives_ms"] = round(measured["wall_step_ms"] - measured["step_ms"], 2)
    emit(result)


if __name__ == "__main__":
    main()
