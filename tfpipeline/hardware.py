"""What machine this is, and the defaults that follow from it: precision, oneDNN, threads.

Everything here reads the machine (`/proc/cpuinfo`, `os.sched_getaffinity`, TensorFlow's device
list) and decides with plain functions of those facts, so the decisions are testable from fake
CPU flag strings and the same facts are recorded in run.json and in every benchmark's JSON.

Decisions, each measured (benchmarks/README.md):

- **Precision** (`--precision auto`): mixed float16 on a CUDA GPU; mixed bfloat16 on CPUs with
  AMX tiles (`amx_bf16`), where it measured 1.85x faster than float32 at equal accuracy, and on
  AMD Zen 4 (family 25 with AVX512_BF16), where it trained 1.24-1.84x faster by network
  (`cifar10` 0.907 in either precision); float32 otherwise. AVX512_BF16 alone is not enough: on a
  Zen 5 (family 26), with the same flags as Zen 4, bfloat16 measured slower than float32, on an
  AVX2-only EPYC 5.6x slower; AMD's family number tells Zen 4 from Zen 5. Mixed precision is a
  training speed-up only: the trained model predicts, explains and exports in float32
  (:mod:`tfpipeline.models.precision`).
- **oneDNN** (`TF_ENABLE_ONEDNN_OPTS`): TensorFlow turns its oneDNN kernels on by default only
  for CPUs with AVX512_VNNI/BF16/AMX-class features; on AVX2-only x86 CPUs they are off. The
  CLI turns them on for every x86 CPU with AVX2, unless the variable is already set.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from tfpipeline.errors import UserError

# CPU flags (as /proc/cpuinfo names them) that matter for the kernels TensorFlow picks.
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
)
# Features with which TensorFlow enables oneDNN by default (tensorflow/core/util/util.cc).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


@dataclass(frozen=True)
class CpuInfo:
    """The CPU facts a benchmark or run records.

    Attributes:
        model: the model name (`AMD EPYC 9B45`, `Intel(R) Xeon(R) ...`; a hypervisor may shorten
            it to `AMD EPYC`, which is why `family` is kept too).
        cores: CPUs this process may run on (its affinity, which is what a container gets).
        flags: the relevant instruction-set flags present (see RELEVANT_FLAGS).
        machine: `x86_64`, `aarch64`, ...
    """

    model: str
    cores: int
    flags: tuple[str, ...]
    machine: str
    family: str = ""  # vendor CPU family/model numbers: tell apart CPUs that share a name
    all_flags: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def amd_family(self) -> int | None:
        """AMD's CPU family number (23: Zen 1-2, 25: Zen 3-4, 26: Zen 5), or None elsewhere."""
        words = self.family.split()
        if "AuthenticAMD" not in words or "family" not in words:
            return None
        number = words[words.index("family") + 1]
        return int(number) if number.isdigit() else None

    @property
    def isa(self) -> str:
        """`amx`, `avx512`, `avx2` or `basic`: the widest vector class present."""
        if "amx_tile" in self.flags:
            return "amx"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "basic"

    def as_json(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("all_flags")
        values["flags"] = list(self.flags)
        values["isa"] = self.isa
        return values


def parse_cpuinfo(text: str, cores: int | None = None, machine: str | None = None) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (the first processor's entries)."""
    model, flags, numbers = "unknown", set(), {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = " ".join(value.split())
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key in ("vendor_id", "cpu family", "model", "stepping") and key not in numbers:
            numbers[key] = value.strip()
    return CpuInfo(
        model=model,
        cores=cores if cores is not None else (os.cpu_count() or 1),
        flags=tuple(f for f in RELEVANT_FLAGS if f in flags),
        machine=machine or platform.machine(),
        family=" ".join(f"{k} {v}" for k, v in numbers.items()),
        all_flags=frozenset(flags),
    )


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached; /proc/cpuinfo on Linux, a minimal record elsewhere)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo") as handle:
            return parse_cpuinfo(handle.read(), cores=cores)
    except OSError:
        return CpuInfo(
            model=platform.processor() or "unknown", cores=cores, flags=(), machine=platform.machine()
        )


def onednn_default_on(cpu: CpuInfo) -> bool:
    """Whether TensorFlow itself enables oneDNN on this CPU (x86 with VNNI/BF16/AMX features)."""
    return cpu.machine in ("x86_64", "AMD64") and any(f in cpu.flags for f in ONEDNN_DEFAULT_FLAGS)


def onednn_setting(cpu: CpuInfo, environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The `TF_ENABLE_ONEDNN_OPTS` value to set before TensorFlow loads, and why.

    Returns:
        (value or None to leave the variable alone, reason).
    """
    environ = os.environ if environ is None else environ
    if ONEDNN_ENV in environ:
        return None, f"{ONEDNN_ENV}={environ[ONEDNN_ENV]} set by the user"
    if onednn_default_on(cpu):
        return None, f"TensorFlow enables oneDNN itself on this CPU ({cpu.isa})"
    if cpu.machine in ("x86_64", "AMD64") and "avx2" in cpu.flags:
        return "1", "AVX2 CPU without AVX512-VNNI/BF16: oneDNN kernels measured faster than Eigen's"
    return None, "not an x86 CPU with AVX2: TensorFlow's default kernels"


_ONEDNN_DECISION: dict[str, str] = {}


def apply_onednn_default(environ: dict[str, str] | None = None) -> str:
    """Set `TF_ENABLE_ONEDNN_OPTS` for this CPU when it should be (call before importing TF).

    The CLI calls this first thing; a library user who imports TensorFlow before tfpipeline
    gets TensorFlow's own default (set the variable yourself, or call this before `import
    tensorflow`).
    """
    environ = os.environ if environ is None else environ
    if _ONEDNN_DECISION.get("environ") is environ and environ.get(ONEDNN_ENV) == _ONEDNN_DECISION.get("set"):
        # A second call (the CLI's and a script's, say) must not read back the value the first
        # set as if the user had chosen it.
        return _ONEDNN_DECISION["reason"]
    value, reason = onednn_setting(cpu_info(), environ)
    if value is not None:
        environ[ONEDNN_ENV] = value
    value_now = environ.get(ONEDNN_ENV, "default")
    _ONEDNN_DECISION.update(reason=reason, value=value_now, set=value, environ=environ)
    return reason


def prepare_tensorflow(*, quiet: bool = True) -> None:
    """Load TensorFlow the way the CLI does: oneDNN set for this CPU, start-up chatter silenced.

    For notebooks and scripts, call it before anything imports TensorFlow. With `quiet`,
    TensorFlow's C++ start-up messages (oneDNN notice, CUDA probing on CPU-only machines, which
    absl prints before `TF_CPP_MIN_LOG_LEVEL` takes effect) are dropped by pointing file
    descriptor 2 at /dev/null for the import and the device probe only, and its warning that
    Keras' per-model predict functions "triggered tf.function retracing" (expected when several
    models predict in turn) is filtered out. Python exceptions still propagate normally.
    """
    apply_onednn_default()  # TensorFlow reads the variable once, when it loads
    if not quiet:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())


def onednn_enabled(cpu: CpuInfo, environ: dict[str, str] | None = None) -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (given the variable and CPU)."""
    environ = os.environ if environ is None else environ
    if ONEDNN_ENV in environ:
        return environ[ONEDNN_ENV].strip().lower() in ("1", "true", "yes", "on")
    return onednn_default_on(cpu)


# ---------------------------------------------------------------------------------------------
# precision


@dataclass(frozen=True)
class PrecisionChoice:
    """The Keras mixed-precision policy a run uses and why (recorded in run.json)."""

    requested: str
    policy: str  # keras policy name: float32, mixed_bfloat16, mixed_float16
    reason: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def choose_precision(requested: str, cpu: CpuInfo, gpus: int) -> PrecisionChoice:
    """Decide the precision policy from the request and the hardware.

    Args:
        requested: `auto`, `float32`, `bfloat16` or `float16`.
        cpu: the CPU facts.
        gpus: number of visible CUDA GPUs.

    Raises:
        UserError: float16 without a GPU (TensorFlow's CPU kernels have no fast float16 path;
            it would be far slower than float32 and risks overflow without loss scaling on CPU).
    """
    if requested == "float32":
        return PrecisionChoice(requested, "float32", "asked for")
    if requested == "float16":
        if gpus == 0:
            raise UserError(
                "--precision float16 needs a CUDA GPU (none visible); on a CPU use float32, or bfloat16 "
                "on CPUs with AMX"
            )
        return PrecisionChoice(requested, "mixed_float16", "asked for, on a GPU")
    if requested == "bfloat16":
        native = "amx_bf16" in cpu.flags or "avx512_bf16" in cpu.flags or gpus > 0
        note = "" if native else " (this CPU has no bfloat16 instructions: expect it to be much slower)"
        return PrecisionChoice(requested, "mixed_bfloat16", "asked for" + note)
    if requested != "auto":
        raise UserError(f"--precision must be auto, float32, bfloat16 or float16; got '{requested}'")
    if gpus > 0:
        return PrecisionChoice(requested, "mixed_float16", f"{gpus} CUDA GPU(s): float16 tensor cores")
    if "amx_bf16" in cpu.flags:
        return PrecisionChoice(requested, "mixed_bfloat16", "CPU with AMX bfloat16 tiles")
    if "avx512_bf16" in cpu.flags and cpu.amd_family == 25:
        return PrecisionChoice(
            requested,
            "mixed_bfloat16",
            "AMD Zen 4 with AVX512_BF16: bfloat16 trained 1.24-1.84x faster at equal accuracy; the "
            "trained model predicts and exports in float32; --precision float32 trains in float32",
        )
    if "avx512_bf16" in cpu.flags:
        return PrecisionChoice(
            requested,
            "float32",
            f"CPU ({cpu.isa}) with AVX512_BF16, no AMX: bfloat16 measured slower or not measured",
        )
    return PrecisionChoice(
        requested, "float32", f"CPU ({cpu.isa}) with no native bfloat16: bfloat16 measured slower"
    )


def visible_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def machine_record() -> dict[str, Any]:
    """The hardware facts every run.json and benchmark JSON carries."""
    cpu = cpu_info()
    reason = _ONEDNN_DECISION.get("reason") or onednn_setting(cpu)[1]
    return {
        "cpu": cpu.as_json(),
        "onednn": {"enabled": onednn_enabled(cpu), "env": os.environ.get(ONEDNN_ENV), "why": reason},
    }
