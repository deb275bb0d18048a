"""Helpers shared by the benchmark scripts: the PyTorch reference as a subprocess, timing, JSON.

Every benchmark compares tfpipeline with `../shared/bench/reference_torch.py` in the same run,
because absolute times drift on shared machines while ratios measured side by side hold.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "bench" / "reference_torch.py"


def torch_available() -> str | None:
    """None when the reference can run, else the reason it cannot."""
    if not REFERENCE.is_file():
        return f"reference script not found at {REFERENCE}"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (benchmark-only: pip install torch==2.13.0)"
    return None


def run_reference(*args: str, timeout: float = 3600) -> dict:
    """Run reference_torch.py with `args` and return the JSON object of its last line."""
    completed = subprocess.run(
        [sys.executable, str(REFERENCE), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reference_torch.py {' '.join(args)} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def as_train_layout(class_folder: Path) -> Path:
    """A temporary folder whose `train/` links to `class_folder` (the reference needs train/)."""
    root = Path(tempfile.mkdtemp(prefix="tfp-bench-"))
    (root / "train").symlink_to(class_folder.resolve())
    return root


def warm_page_cache(folder: Path) -> int:
    """Read every file once so both sides measure decoding, not the first disk read."""
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            total += len(path.read_bytes())
    return total


def machine() -> dict:
    """What every benchmark JSON carries: the CPU (model, cores, flags), oneDNN, library versions
    and the load average (a loaded machine halves any figure, so check it before trusting one).

    oneDNN is reported as tfpipeline's default for this CPU, which the measured processes apply
    (benchmarks whose variants run in child processes never load TensorFlow's kernels here)."""
    from tfpipeline.hardware import apply_onednn_default, machine_record

    apply_onednn_default()  # a no-op where the benchmark already did (quiet_tensorflow)
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    if importlib.util.find_spec("torch") is not None:
        import torch

        versions["torch"] = torch.__version__
    record = machine_record()
    return {
        "cpu": record["cpu"],
        "onednn": record["onednn"],
        "versions": versions,
        "loadavg": os.getloadavg(),
    }


def issue_target(cpu: dict, *, avx2: float, avx512: float) -> float:
    """The performance issue's target for this CPU class: `avx512` where AVX-512 (or AMX) is
    present, `avx2` otherwise."""
    return avx512 if cpu["isa"] in ("avx512", "amx") else avx2


def emit(result: dict) -> None:
    """Print the benchmark's one JSON object (last line of output)."""
    print(json.dumps(result, indent=None, default=float))


def quiet_tensorflow() -> None:
    """Quiet TensorFlow's start-up logs and apply tfpipeline's oneDNN default (before TF loads)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfpipeline.hardware import apply_onednn_default

    apply_onednn_default()
