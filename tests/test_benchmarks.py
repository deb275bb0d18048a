"""Smoke tests: each benchmark script runs on tiny inputs and prints one valid JSON object.

Timing is never asserted here (benchmarks measure, tests check correctness); only that the
scripts work and report the fields their README promises.
"""

from __future__ import annotations

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
