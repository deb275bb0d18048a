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

    python benchmarks/profile_step.py [--model small_cnn] [--settings onednn_off,onednn_on] [--top 8]

Needs `pip install xprof` (benchmark-only). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
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


def profile(model_name: str, size: int, batch: int, steps: int, top: int) -> dict:
    """Inside a fresh process: images/s of `steps` steps, and the top ops of their profile."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

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
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one setting, in-process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(profile(args.model, args.image_size, args.batch_size, args.steps, args.top)))
        return
    if importlib.util.find_spec("xprof") is None:
        sys.exit("profile_step: needs the profiler's converter: pip install xprof (benchmark-only)")
    result = {"benchmark": "profile_step", "model": args.model, "image_size": args.image_size,
              "batch_size": args.batch_size, **machine(), "settings": {}}  # fmt: skip
    for name in args.settings.split(","):
        env = {
            k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")
        }
        env.update(SETTINGS[name])
        command = [
            sys.executable, __file__, "--measure", name, "--model", args.model, "--steps", str(args.steps),
            "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--top", str(args.top),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            result["settings"][name] = {
                "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
            }
            continue
        result["settings"][name] = {"env": SETTINGS[name], **json.loads(done.stdout.strip().splitlines()[-1])}
    emit(result)


if __name__ == "__main__":
    main()
