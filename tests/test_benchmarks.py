"""Smoke tests: each benchmark script runs on tiny inputs and prints one valid JSON object.

Timing is never asserted here (benchmarks measure, tests check correctness); only that the
scripts work and report the fields their README promises.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfpipeline.hardware import choose_precision, cpu_info

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # benchmark smoke test (~35 s: new processes import TensorFlow); run with -m slow
def test_input_pipeline_benchmark(class_folder, image_folder):
    result = run_benchmark(
        "input_pipeline.py",
        *("--data", str(class_folder), str(image_folder / "train")),
        *("--image-size", "32", "--repeats", "2", "--no-reference"),
    )
    assert result["images"] == 24 + 16
    for variant in ("first_epoch", "second_run", "second_run_new_process", "cached_epoch"):
        assert result["images_per_sec"][variant] > 0 and len(result["repeats"][variant]) == 2
        assert result["cpu_seconds"][variant]["median"] > 0
        assert len(result["system_seconds"][variant]["repeats"]) == 2
    assert result["cpu"]["cores"] >= 1 and "model" in result["cpu"] and "tensorflow" in result["versions"]
    assert result["reference"] == {"skipped": "skipped by --no-reference"}


@pytest.mark.slow  # benchmark smoke test (23 s, several processes); run with -m slow
def test_train_step_benchmark():
    flags = [
        "--steps",
        "2",
        "--image-size",
        "48",
        "--batch-size",
        "4",
        "--variants",
        "default,onednn_off",
        "--repeats",
        "1",
    ]
    result = run_benchmark("train_step.py", *flags, "--no-reference")
    for variant in ("default", "onednn_off"):
        assert result["tfpipeline"][variant]["images_per_sec"] > 0, result


def test_train_step_benchmark_times_a_recipe_network_without_the_small_cnn_reference():
    flags = ["--model", "fast_resnet", "--filters", "8,16,16", "--image-size", "32", "--batch-size", "4"]
    variants = ("--variants", "default,float32,bf16", "--repeats", "1")
    result = run_benchmark("train_step.py", *flags, "--steps", "2", *variants)
    assert (result["model"], result["filters"], result["image_size"]) == ("fast_resnet", [8, 16, 16], 32)
    measured = result["tfpipeline"]
    assert all(measured[name]["images_per_sec"] > 0 for name in ("default", "float32", "bf16"))
    # `default` is what a run gets on this CPU: the policy `--precision auto` chooses, recorded.
    expected = choose_precision("auto", cpu_info(), 0).policy
    assert measured["default"]["policy"] == expected
    assert (measured["float32"]["policy"], measured["bf16"]["policy"]) == ("float32", "mixed_bfloat16")
    # torch's network is small_cnn's: comparing another model against it would be meaningless.
    assert "small_cnn" in result["reference"]["skipped"] and "ratios" not in result


def test_train_step_benchmark_names_the_models_for_an_unknown_one():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_step.py"), "--model", "resnet9000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode != 0
    assert "unknown --model 'resnet9000'" in completed.stderr and "fast_resnet" in completed.stderr


def load_benchmark(script: str):
    """A benchmark script as a module, for its pure functions."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONV2 = "mb32_ic16oc32_ih111oh109kh3sh1dh0ph0_iw111ow109kw3sw1dw0pw0"  # small_cnn's 2nd convolution
POOL1 = "mb32ic16_ih222oh111kh2sh2dh0ph0_iw222ow111kw2sw2dw0pw0"


def onednn_line(event: str, kind: str, implementation: str, direction: str, problem: str, ms) -> str:
    """One line of oneDNN 3.7's verbose log as TensorFlow's training step writes it (the memory
    descriptors shortened)."""
    fields = ["onednn_verbose", "v1", "primitive", event, "cpu", kind, implementation, direction]
    return ",".join([*fields, "src:f32::blocked:acdb::f0", "", "alg:direct", problem, str(ms)])


def onednn_step(backward_weights: float, forward: float, reorder: float, pool: float) -> list[str]:
    """The log of one step: two convolution passes, a reorder called twice, a pooling pass."""
    return [
        onednn_line("exec", "convolution", "jit:avx512_core", "backward_weights", CONV2, backward_weights),
        onednn_line("exec", "convolution", "brg_conv_fwd:avx512_core", "forward_training", CONV2, forward),
        onednn_line("exec", "reorder", "jit:uni", "undef", "16x3x3x3", reorder),
        onednn_line("exec", "reorder", "jit:uni", "undef", "16x3x3x3", reorder),
        onednn_line("exec", "pooling", "jit:avx512_core", "backward_data", POOL1, pool),
    ]


def test_profile_step_ranks_onednn_primitives_by_their_time_per_step():
    profile_step = load_benchmark("profile_step.py")
    log = [
        "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
        onednn_line("create:cache_miss", "convolution", "jit:avx512_core", "backward_weights", CONV2, 0.5),
        *onednn_step(90.0, 30.0, 1.0, 5.0),  # the first step: primitives created, caches cold
        *onednn_step(54.0, 17.0, 1.0, 4.0),
        *onednn_step(50.0, 18.0, 2.0, 4.0),
    ]
    result = profile_step.primitive_times(log, steps=3, top=3)
    rows = result["primitives"]
    # Medians of 3 calls (the cold first one does not count); the info and create lines are not calls.
    assert [(r["kind"], r["pass"], r["median_ms"], r["calls"]) for r in rows] == [
        ("convolution", "backward_weights", 54.0, 3),
        ("convolution", "forward_training", 18.0, 3),
        ("pooling", "backward_data", 4.0, 3),
    ]
    # A primitive called twice per step counts twice: the reorder (median 1 ms, 6 calls) is 2 ms a step.
    assert result["step_ms"] == pytest.approx(54 + 18 + 2 + 4)
    assert rows[0]["share"] == pytest.approx(54 / 78, abs=1e-3)
    # The same convolution's forward and backward-weights passes do the same work: 2*32*109*109*32*16*9
    # = 3.5 GFLOP, so their rates differ by their times (here 3x).
    flops = 2 * 32 * 109 * 109 * 32 * 16 * 9
    assert rows[1]["gflops_per_sec"] == pytest.approx(flops / 18.0 / 1e6, rel=1e-3)
    assert rows[0]["gflops_per_sec"] == pytest.approx(rows[1]["gflops_per_sec"] / 3, rel=1e-2)
    assert "gflops_per_sec" not in rows[2]  # pooling: no convolution arithmetic
    assert profile_step.conv_flops("mb32ic16_ih222oh111kh2sh2") is None


@pytest.mark.slow  # a new process importing TensorFlow (~12 s); run with -m slow
def test_profile_step_reads_onednn_log_of_a_real_step():
    flags = ("--primitives", "--settings", "onednn_on", "--steps", "1", "--image-size", "64", "--top", "50")
    measured = run_benchmark("profile_step.py", *flags)["settings"]["onednn_on"]
    assert measured["images_per_sec"] > 0 and measured["step_ms"] > 0
    passes = {(row["kind"], row["pass"]) for row in measured["primitives"]}
    # small_cnn's four convolutions train through oneDNN (forced on, as on any x86 CPU).
    assert {("convolution", "forward_training"), ("convolution", "backward_weights")} <= passes
    assert sum(row["share"] for row in measured["primitives"]) == pytest.approx(1.0, abs=0.01)
    # Calls timed one at a time by default (overlapping calls would each count the other's time),
    # and the step's clock time set beside the primitives' sum.
    assert measured["inter_op_threads"] == 1
    assert measured["wall_step_ms"] == pytest.approx(1000 * 32 / measured["images_per_sec"], rel=0.01)
    assert measured["outside_primitives_ms"] == pytest.approx(
        measured["wall_step_ms"] - measured["step_ms"], abs=0.02
    )


def test_profile_step_refuses_a_negative_inter_op_count():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "profile_step.py"), "--primitives", "--inter-op", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert "--inter-op must be 0 (TensorFlow's default) or more, not -1" in completed.stderr


@pytest.mark.slow
def test_epoch_benchmark(image_folder):
    result = run_benchmark(
        "epoch.py", "--data", str(image_folder), "--epochs", "2", "--image-size", "48", "--no-reference"
    )
    assert result["tfpipeline"]["epochs"] == 2
    assert 0.0 <= result["tfpipeline"]["best_val_auc"] <= 1.0
    # Every benchmark names the CPU it ran on, and the kernels tfpipeline chose for it.
    assert result["cpu"]["isa"] in ("amx", "avx512", "avx2", "basic") and result["cpu"]["cores"] >= 1
    assert result["onednn"]["why"] and "tensorflow" in result["versions"]


@pytest.mark.slow  # three tiny trainings in their own processes (~1 min); run with -m slow
def test_ablation_switches_one_technique_off_and_repeats_the_base(class_folder):
    result = run_benchmark(
        "ablation.py", "--data", str(class_folder), "--only", "label_smoothing",
        "--", "--epochs", "1", "--filters", "8,16,16", "--batch-size", "8", "--ood", "none",
    )  # fmt: skip
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == ["base", "label_smoothing", "base_again"]
    assert rows["label_smoothing"]["switched_off_by"] == "--label-smoothing 0"
    assert rows["base"]["switched_off_by"] == ""
    assert result["noise"] == pytest.approx(
        abs(rows["base"]["val_accuracy_tta"] - rows["base_again"]["val_accuracy_tta"]), abs=1e-4
    )
    assert {"model", "cores", "flags"} <= set(result["machine"]["cpu"])
    assert all(0.0 <= row["val_accuracy_tta"] <= 1.0 and row["train_seconds"] > 0 for row in rows.values())


@pytest.mark.slow  # two tiny 2-trial searches in one process (~1 min); run with -m slow
def test_tuner_decode_benchmark_decodes_once_then_reads(image_folder):
    result = run_benchmark(
        "tuner_decode.py", "--data", str(image_folder), "--trials", "2", "--image-size", "32", "--epochs", "1"
    )
    empty, filled = result["searches"]["empty_cache"], result["searches"]["filled_cache"]
    assert empty["trials"] == filled["trials"] == 2 and len(empty["trial_seconds"]) == 2
    assert empty["decode_seconds"] > 0  # the data check's pass, which also writes the cache
    # The second search reads what the first stored: no decoding, no header checks.
    assert filled["decode_seconds"] == 0 and filled["header_check_seconds"] == 0
    assert 0 < filled["pixel_share"] < 1 and {"model", "cores", "flags"} <= set(result["cpu"])


@pytest.mark.slow  # benchmark smoke test (~20 s); needs torch, a benchmark-only dependency
def test_airbench_reference_trains_on_the_recipes_split(class_folder):
    pytest.importorskip("torch")
    result = run_benchmark(
        "airbench_reference.py", "--data", str(class_folder), "--epochs", "2", "--batch-size", "8"
    )
    # The cifar10 recipe's split (90 / 10) of the fixture's 24 images, two classes.
    assert result["split"]["recipe"] == "cifar10"
    assert result["split"]["train"] + result["split"]["val"] == 24 and result["split"]["val"] >= 2
    assert [point["epoch"] for point in result["curve"]] == [1, 2]
    assert result["steps"] == 2 * (result["split"]["train"] // 8)
    assert 0 <= result["val_accuracy"] <= 1 and 0 <= result["val_accuracy_tta"] <= 1
    assert {"model", "cores", "flags"} <= set(result["cpu"]) and "torch" in result["versions"]


def test_airbench_reference_refuses_a_split_smaller_than_one_batch(class_folder):
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "airbench_reference.py"), "--data", str(class_folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if "needs torch" in completed.stderr:
        pytest.skip("torch is not installed")
    assert completed.returncode != 0 and "cannot fill one batch of 1024 (--batch-size)" in completed.stderr
