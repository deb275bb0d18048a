"""Hardware facts and the defaults chosen from them: precision and oneDNN, from fake CPU flags."""

from __future__ import annotations

import pytest

import tfpipeline.hardware as hardware
from tfpipeline.errors import UserError
from tfpipeline.hardware import (
    ONEDNN_ENV,
    apply_onednn_default,
    choose_precision,
    cpu_info,
    onednn_setting,
    parse_cpuinfo,
)

BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 popcnt fma avx"
CPUS = {
    "epyc_avx2": (
        "AMD EPYC 7B13",
        f"{BASE} avx2 bmi2",
    ),
    "xeon_avx512_bf16": (
        "Intel(R) Xeon(R) Platinum 8373C",
        f"{BASE} avx2 avx512f avx512bw avx512_vnni avx512_bf16",
    ),
    "xeon_amx": (
        "Intel(R) Xeon(R) Platinum 8481C",
        f"{BASE} avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
    ),
    "old": ("Intel(R) Core(TM)2 Duo", "fpu sse sse2"),
    # As a hypervisor shows them: the same short name, told apart by AMD's family number.
    "epyc_zen4": ("AMD EPYC", f"{BASE} avx2 avx512f avx512bw avx512_vnni avx512_bf16"),
    "epyc_zen5": ("AMD EPYC", f"{BASE} avx2 avx512f avx512bw avx512_vnni avx512_bf16"),
}
FAMILIES = {
    "epyc_avx2": ("AuthenticAMD", 25, 1),
    "epyc_zen4": ("AuthenticAMD", 25, 17),
    "epyc_zen5": ("AuthenticAMD", 26, 2),
}


def fake(name: str, machine: str = "x86_64"):
    model, flags = CPUS[name]
    vendor, family, model_number = FAMILIES.get(name, ("GenuineIntel", 6, 143))
    numbers = f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model_number}\n"
    first = f"processor\t: 0\n{numbers}model name\t: {model}\nflags\t\t: {flags}\n"
    text = f"{first}\nprocessor\t: 1\nflags\t\t: fpu\n"
    return parse_cpuinfo(text, cores=2, machine=machine)


def test_parse_cpuinfo_keeps_the_relevant_flags_of_the_first_cpu():
    cpu = fake("xeon_amx")
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8481C" and cpu.cores == 2
    assert {"avx2", "avx512f", "amx_bf16", "amx_tile"} <= set(cpu.flags) and "sse2" not in cpu.flags
    assert cpu.isa == "amx" and fake("epyc_avx2").isa == "avx2" and fake("old").isa == "basic"
    record = cpu.as_json()
    assert record["isa"] == "amx" and isinstance(record["flags"], list)


@pytest.mark.parametrize(
    ("cpu", "gpus", "policy"),
    [
        ("epyc_avx2", 0, "float32"),  # bf16 measured 5.6x slower on an AVX2 EPYC
        ("xeon_avx512_bf16", 0, "float32"),  # AVX512_BF16 without AMX measured slower too
        ("xeon_amx", 0, "mixed_bfloat16"),  # AMX: 1.85x faster at equal accuracy
        ("epyc_zen4", 0, "mixed_bfloat16"),  # Zen 4: bfloat16 1.24-1.84x faster
        ("epyc_zen5", 0, "float32"),  # Zen 5, the same flags: bfloat16 measured slower
        ("old", 0, "float32"),
        ("epyc_avx2", 1, "mixed_float16"),
    ],
)
def test_auto_precision_from_cpu_flags(cpu, gpus, policy):
    choice = choose_precision("auto", fake(cpu), gpus)
    assert choice.policy == policy and choice.requested == "auto" and choice.reason


def test_amd_family_is_read_from_the_vendor_numbers_not_the_name():
    families = {name: fake(name).amd_family for name in ("epyc_avx2", "epyc_zen4", "epyc_zen5")}
    assert families == {"epyc_avx2": 25, "epyc_zen4": 25, "epyc_zen5": 26}
    assert fake("xeon_amx").amd_family is None  # an Intel family 6 is not an AMD family
    no_numbers = parse_cpuinfo("model name\t: AMD EPYC\nflags\t\t: avx2 avx512_bf16\n", cores=1)
    assert no_numbers.amd_family is None
    assert choose_precision("auto", no_numbers, 0).policy == "float32"  # unknown family: the safe choice


def test_zen4_trains_in_bfloat16_and_says_how_to_opt_out():
    reason = choose_precision("auto", fake("epyc_zen4"), 0).reason
    assert "--precision float32" in reason and "faster" in reason
    assert "predicts and exports in float32" in reason  # what a user may worry about, answered
    assert "--precision float32" not in choose_precision("auto", fake("epyc_zen5"), 0).reason


def test_explicit_precisions_and_impossible_ones():
    assert choose_precision("float32", fake("xeon_amx"), 0).policy == "float32"
    slow = choose_precision("bfloat16", fake("epyc_avx2"), 0)
    assert slow.policy == "mixed_bfloat16" and "slower" in slow.reason  # allowed, but said plainly
    with pytest.raises(UserError, match="--precision float16 needs a CUDA GPU"):
        choose_precision("float16", fake("xeon_amx"), 0)
    assert choose_precision("float16", fake("epyc_avx2"), 2).policy == "mixed_float16"


def test_onednn_is_turned_on_for_avx2_cpus_tensorflow_leaves_off():
    value, reason = onednn_setting(fake("epyc_avx2"), {})
    assert value == "1" and "AVX2" in reason
    assert onednn_setting(fake("xeon_avx512_bf16"), {})[0] is None  # TF enables it itself
    assert onednn_setting(fake("old"), {})[0] is None
    assert onednn_setting(fake("epyc_avx2", machine="aarch64"), {})[0] is None
    value, reason = onednn_setting(fake("epyc_avx2"), {ONEDNN_ENV: "0"})
    assert value is None and "set by the user" in reason


def test_applying_the_onednn_default_twice_keeps_the_first_reason(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: fake("epyc_avx2"))
    monkeypatch.setattr(hardware, "_ONEDNN_DECISION", {})
    environ: dict[str, str] = {}
    first = apply_onednn_default(environ)
    assert environ[ONEDNN_ENV] == "1" and "AVX2" in first
    assert apply_onednn_default(environ) == first  # not "set by the user": it was set by us
    environ[ONEDNN_ENV] = "0"  # the user's own choice afterwards is reported as theirs
    assert "set by the user" in apply_onednn_default(environ)


def test_this_machine_is_described():
    cpu = cpu_info()
    assert cpu.cores >= 1 and cpu.model
