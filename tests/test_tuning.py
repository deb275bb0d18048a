"""`tfpipeline tune` searches that train: end-to-end CLI search with exports and --train-best,
resume after an interruption, grid, time budget, trials handed over to fresh processes, and
distributed search (role flags, MirroredStrategy trials, chief/worker on loopback).

Searches here are tiny (16 px images, models 4-8 filters wide, 1 epoch, 1-3 trials) so the
non-slow part of this file stays around a minute and a half on 2 cores. Search spaces and
oracle state without training are in test_tuning_space.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import write_split_folder

from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.config_io import from_dict
from tfpipeline.errors import UserError
from tfpipeline.tuning import distributed

# Small, fast widths; `tune_only` keeps everything else at the base config's values.
TINY_SPACE = {
    "tune_only": True,
    "filters_1": [4, 8],
    "lr": {"min": 1e-3, "max": 3e-2, "sampling": "log"},
    "batch_size": [4, 8],
    "flip": [False, True],
}
CLI_TINY = ["--image-size", "16", "--padding", "same", "--filters", "4,8,8,8", "--dense-units", "8,8,8"]
CLI_TINY += ["--epochs", "1", "--optimizer", "adam", "--batch-size", "8"]


def tiny_base(data: Path, tmp_path: Path, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=str(data), image_size=(16, 16), batch_size=8),
        model=ModelConfig(padding="same", filters=(4, 8, 8, 8), dense_units=(8, 8, 8)),
        train=TrainConfig(**{"epochs": 1, "optimizer": "adam", "run_dir": str(tmp_path / "runs"), **train}),
    )


def write_space(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def quiet_settings(tmp_path: Path, **kwargs):
    from tfpipeline.tuning import SearchSettings

    return SearchSettings(**{"directory": str(tmp_path / "tuner_results"), "verbose": False, **kwargs})


# --------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def cli_search(tmp_path_factory):
    """`tfpipeline tune ... --train-best` on the tiny space (2 trials), via the CLI; run once."""
    from tfpipeline.cli import main

    tmp_path = tmp_path_factory.mktemp("cli_search")
    data = write_split_folder(tmp_path / "data")
    space = write_space(tmp_path / "space.yaml", TINY_SPACE)
    results = tmp_path / "tuner_results"
    args = ["tune", "--data", str(data), *CLI_TINY, "--max-trials", "2", "--space", str(space)]
    args += ["--directory", str(results), "--project-name", "e2e", "--run-dir", str(tmp_path / "runs")]
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("TFPIPELINE_CACHE_DIR", str(tmp_path / "cache"))
        assert main([*args, "--train-best"]) == 0
    return results / "e2e", out.getvalue(), tmp_path / "runs"


def test_cli_search_exports_results_and_trains_the_best(cli_search, capsys):
    project, out, runs = cli_search
    trials = pd.read_csv(project / "trials.csv")
    assert list(trials["trial_id"]) == [0, 1] and set(trials["status"]) == {"COMPLETED"}
    for column in (
        "objective",
        "filters_1",
        "lr",
        "batch_size",
        "flip",
        "val_auc",
        "val_loss",
        "val_accuracy",
    ):
        assert column in trials, column
    assert {"best_epoch", "epochs_run", "seconds"} <= set(trials) and (trials["epochs_run"] == 1).all()
    assert (trials["objective"] == trials["val_auc"]).all()
    for name in ("best.yaml", "objective.png", "hparams.png", "summary.txt", "search.json"):
        assert (project / name).stat().st_size > 0, name
    assert list((project / "tensorboard").rglob("events.out.tfevents.*"))
    assert "val_auc" in out and "best:" in out

    # --train-best went through `train`: a normal run folder with the report.
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.keras").is_file()

    from tfpipeline.cli import main

    assert main(["tune", "--summary", "--directory", str(project.parent), "--project-name", "e2e"]) == 0
    summary = capsys.readouterr().out
    assert "objective val_auc max" in summary and "trials: 2 (2 completed)" in summary


def test_best_yaml_round_trips_into_train_config(cli_search):
    from tfpipeline.cli import build_parser
    from tfpipeline.flags import resolve_run_config

    project, _, _ = cli_search
    best = project / "best.yaml"
    args = build_parser().parse_args(["train", "--config", str(best)])
    resolved = resolve_run_config(args)
    assert resolved == from_dict(RunConfig, yaml.safe_load(best.read_text()))
    trials = pd.read_csv(project / "trials.csv")
    row = trials.sort_values("objective", ascending=False).iloc[0]
    assert resolved.model.filters[0] == row["filters_1"] and resolved.data.batch_size == row["batch_size"]
    assert resolved.train.lr == pytest.approx(row["lr"]) and resolved.data.augment.flip == row["flip"]
    assert resolved.model.filters[1:] == (8, 8, 8) and resolved.data.image_size == (16, 16)


class Interrupt:
    """Hook: KeyboardInterrupt at the end of trial `trial_id`'s first epoch (mid-trial)."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id

    def __call__(self, event):
        if event.kind == "epoch" and event.trial_id == self.trial_id:
            raise KeyboardInterrupt


@pytest.mark.slow  # 34 s of interrupted and resumed searches; run with -m slow
def test_resume_skips_finished_trials_and_reruns_the_interrupted_one(image_folder, tmp_path):
    from tfpipeline.tuning import run_search

    base = tiny_base(image_folder, tmp_path)
    started: list[str] = []

    def count(event):
        if event.kind == "begin":
            started.append(event.trial_id)

    settings = quiet_settings(tmp_path, project_name="resume", max_trials=2, space=TINY_SPACE)
    with pytest.raises(KeyboardInterrupt):
        run_search(base, settings, hooks=[count, Interrupt("1")])
    assert started == ["0", "1"]

    started.clear()
    more = quiet_settings(tmp_path, project_name="resume", max_trials=3, space=TINY_SPACE)
    result = run_search(base, more, hooks=[count])
    assert started == ["1", "2"]  # trial 0 is not redone; 1 re-runs from scratch; 2 is new
    trials = result.exports.trials
    assert list(trials["trial_id"]) == ["0", "1", "2"] and set(trials["status"]) == {"COMPLETED"}
    assert (trials["epochs_run"] == 1).all()

    started.clear()
    assert run_search(base, more, hooks=[count]).trials_run == 0 and started == []
    with pytest.raises(UserError, match=r"base config \(train.epochs 1 -> 2\)"):
        run_search(tiny_base(image_folder, tmp_path, epochs=2), more)


def test_grid_over_a_two_by_one_space_runs_two_trials(image_folder, tmp_path):
    from tfpipeline.tuning import run_search

    started: list[str] = []
    space = {"tune_only": True, "filters_1": [4, 8], "optimizer": ["adam"]}
    settings = quiet_settings(tmp_path, tuner="grid", project_name="grid", space=space)
    result = run_search(tiny_base(image_folder, tmp_path), settings, hooks=[lambda e: started.append(e.kind)])
    assert started.count("begin") == 2 and result.trials_run == 2
    assert sorted(result.exports.trials["filters_1"]) == [4, 8]


def test_time_budget_stops_scheduling_and_still_exports(image_folder, tmp_path):
    from tfpipeline.tuning import run_search

    def slow_first_trial(event):
        if event.kind == "begin":
            time.sleep(1.5)  # the 0.02-minute budget runs out during trial 0

    settings = quiet_settings(
        tmp_path, project_name="budget", max_trials=10, time_budget=0.02, space=TINY_SPACE
    )
    result = run_search(tiny_base(image_folder, tmp_path), settings, hooks=[slow_first_trial])
    assert result.trials_run == 1 and result.stopped_by_budget
    assert len(result.exports.trials) == 1 and result.exports.best_yaml.is_file()


# --------------------------------------------------------------------------- distribution


@pytest.fixture
def clean_env(monkeypatch):
    for name in (distributed.ENV_ID, distributed.ENV_IP, distributed.ENV_PORT):
        monkeypatch.setenv(name, "-")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


def test_role_flags_set_kerastuner_variables(clean_env):
    settings = distributed.DistributedSettings
    assert distributed.configure(settings()) is None
    assert distributed.configure(settings(role="worker", oracle="127.0.0.1:8123", worker_id="w1")) == "worker"
    assert (os.environ["KERASTUNER_TUNER_ID"], os.environ["KERASTUNER_ORACLE_IP"]) == ("w1", "127.0.0.1")
    assert os.environ["KERASTUNER_ORACLE_PORT"] == "8123"
    assert distributed.configure(settings(role="chief", oracle="0.0.0.0:9000")) == "chief"
    assert os.environ["KERASTUNER_TUNER_ID"] == "chief"
    # Variables set by hand are honoured without --role.
    clean_env.setenv("KERASTUNER_TUNER_ID", "tuner7")
    assert distributed.configure(settings()) == "worker"
    for bad, message in [
        (settings(role="worker"), "needs --oracle"),
        (settings(role="worker", oracle="h:1", worker_id="chief-2"), "must not contain 'chief'"),
        (settings(role="chief", oracle="nohost"), "HOST:PORT"),
        (settings(oracle="h:1"), "need --role"),
    ]:
        with pytest.raises(UserError, match=message):
            distributed.configure(bad)
    clean_env.delenv("KERASTUNER_ORACLE_PORT")
    with pytest.raises(UserError, match="KERASTUNER_ORACLE_PORT"):
        distributed.current_role()


def test_tune_flags_leave_the_run_config_to_train_flags(clean_env):
    from tfpipeline.cli import build_parser
    from tfpipeline.cli.tune_commands import _base_args
    from tfpipeline.flags import resolve_run_config

    argv = ["tune", "--tuner", "hyperband", "--max-epochs", "4", "--role", "worker", "--oracle", "h:1"]
    args = build_parser().parse_args([*argv, "--worker-id", "w", "--lr", "0.01", "--model", "keras_cnn"])
    config = resolve_run_config(_base_args(args))
    assert config.train.lr == 0.01 and config.model.name == "keras_cnn" and args.max_epochs == 4


def test_worker_fails_fast_without_a_chief(clean_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    distributed.configure(distributed.DistributedSettings(role="worker", oracle=f"127.0.0.1:{port}"))
    start = time.monotonic()
    with pytest.raises(UserError, match="no chief answering"):
        distributed.wait_for_chief(1.0)
    assert time.monotonic() - start < 10


def _env(tmp_path: Path, name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        TFPIPELINE_CACHE_DIR=str(tmp_path / f"cache-{name}"),
    )
    return env


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.tuning import SearchSettings, run_search
base = RunConfig(
    data=DataConfig(data=sys.argv[1], image_size=(16, 16), batch_size=8),
    model=ModelConfig(padding="same", filters=(4, 8, 8, 8), dense_units=(8, 8, 8)),
    train=TrainConfig(epochs=1, optimizer="adam"),
)
settings = SearchSettings(max_trials=1, directory=sys.argv[2], space={"tune_only": True, "filters_1": [4]},
                          devices=("/cpu:0", "/cpu:1"))
result = run_search(base, settings)
print(json.dumps({"status": list(result.exports.trials["status"])}))
"""


@pytest.mark.slow  # 16 s; run with -m slow
def test_trials_train_under_mirrored_strategy_on_two_logical_cpus(image_folder, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run(
        [sys.executable, str(script), str(image_folder), str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path, "m"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 replicas (MirroredStrategy)" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": ["COMPLETED"]}


@pytest.mark.slow
def test_distributed_search_on_loopback_chief_and_two_workers(image_folder, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    space = write_space(tmp_path / "space.yaml", TINY_SPACE)
    command = [sys.executable, "-m", "tfpipeline.cli", "tune", "--data", str(image_folder), *CLI_TINY]
    command += ["--max-trials", "4", "--space", str(space), "--directory", str(tmp_path / "results")]
    command += ["--project-name", "dist", "--oracle", f"127.0.0.1:{port}"]
    roles = {
        "chief": ["--role", "chief", "--num-workers", "2", "--chief-timeout", "4"],
        "w1": ["--role", "worker", "--worker-id", "w1", "--rpc-timeout", "120"],
        "w2": ["--role", "worker", "--worker-id", "w2", "--rpc-timeout", "120"],
    }
    procs = {}
    for name, extra in roles.items():
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT,
                                        env=_env(tmp_path, name)), log)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        for proc, _ in procs.values():
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    for name, (proc, _) in procs.items():
        assert proc.returncode == 0, f"{name}:\n{logs[name][-3000:]}"
    done = {name: re.findall(r"\] trial (\S+) done: ", logs[name]) for name in ("w1", "w2")}
    finished = done["w1"] + done["w2"]
    assert sorted(finished) == ["0", "1", "2", "3"], done  # every trial finished exactly once
    trials = pd.read_csv(tmp_path / "results" / "dist" / "trials.csv", dtype={"trial_id": str})
    assert sorted(trials["trial_id"]) == ["0", "1", "2", "3"] and set(trials["status"]) == {"COMPLETED"}
    assert (tmp_path / "results" / "dist" / "best.yaml").is_file()
    assert "chief: serving" in logs["chief"]


@pytest.mark.slow  # 27 s of fresh processes; benchmarks/tuner_memory.py measures the same hand-over
def test_trials_per_process_hands_the_search_over_to_fresh_processes(tmp_path, capsys):
    """3 trials, 1 per process: this process runs one, two fresh processes run the rest."""
    from tfpipeline.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"tune_only": True, "lr": [0.001, 0.01, 0.1]}))
    args = [
        "tune", "--model", "small_cnn", "--tuner", "random", "--max-trials", "3", "--data", "faces",
        "--epochs", "1", "--image-size", "16", "--padding", "same", "--space", str(space),
        "--directory", str(tmp_path), "--project-name", "handover", "--trials-per-process", "1",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("continuing in a fresh one") == 2
    trials = pd.read_csv(tmp_path / "handover" / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"COMPLETED"}
    assert trials["trial_id"].nunique() == 3  # each trial ran exactly once
