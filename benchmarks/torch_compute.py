#!/usr/bin/env python3
"""Compute-only training throughput of the reference PyTorch small CNN (no data loading).

The reference script's `train` mode includes PIL decoding; this harness imports its network
and optimiser settings and times forward + backward + SGD step on one in-memory batch, in the
default (NCHW) and channels-last memory layouts. Run as a subprocess by train_step.py so
PyTorch and TensorFlow never share a process (their thread pools would fight).

    python benchmarks/torch_compute.py [--steps 30] [--batch-size 32] [--image-size 224]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REFERENCE  # noqa: E402


def load_reference():
    spec = importlib.util.spec_from_file_location("reference_torch", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(channels_last: bool, steps: int, batch_size: int, size: int, warmup: int) -> float:
    import torch

    reference = load_reference()
    torch.manual_seed(101)
    net = reference.SmallCNN(bn=False, dropout=False, size=size)
    x = torch.rand(batch_size, 3, size, size)
    y = (torch.rand(batch_size) > 0.5).float()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.BCELoss()
    net.train()

    def step():
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "default_images_per_sec": round(
            measure(False, args.steps, args.batch_size, args.image_size, args.warmup), 1
        ),
        "channels_last_images_per_sec": round(
            measure(True, args.steps, args.batch_size, args.image_size, args.warmup), 1
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
