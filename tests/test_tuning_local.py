"""`tfpipeline tune --workers N`: hardware shares, the launcher's flags, a real 2-worker search on
this machine's CPU cores, and Ctrl-C stopping every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import yaml

from tfpipeline.errors import UserError
from tfpipeline.tuning.local import plan_workers, strip_launcher_flags


def test_workers_get_one_gpu_each_or_an_even_share_of_cores():
    plan = plan_workers(2, [0, 1, 2, 3, 4], [])
    assert plan.cores == ((0, 1), (2, 3)) and not plan.gpus
    assert plan.describe(1) == "CPU cores 2,3"
    gpus = plan_workers(2, [0, 1], ["0", "1", "2"])
    assert gpus.gpus == ("0", "1") and gpus.describe(0) == "GPU 0"


def test_too_many_workers_is_a_clear_error_with_the_numbers():
    with pytest.raises(UserError, match=r"--workers 3: this process may use 2 CPU core\(s\)"):
        plan_workers(3, [0, 1], [])
    with pytest.raises(UserError, match=r"--workers 2: only 1 GPU\(s\) visible"):
        plan_workers(2, list(range(8)), ["0"])
    with pytest.raises(UserError, match="at least 1"):
        plan_workers(0, [0, 1], [])


def test_the_launcher_sets_roles_itself():
    argv = ["tune", "--workers", "2", "--role", "chief", "--oracle=1.2.3.4:5", "--train-best", "--lr", "0.1"]
    assert strip_launcher_flags(argv) == ["tune", "--lr", "0.1"]


def _command(tmp_path, *extra):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"tune_only": True, "lr": [0.001, 0.01, 0.03, 0.1]}))
    return [
        sys.executable, "-m", "tfpipeline.cli", "tune", "--model", "small_cnn", "--tuner", "random",
        "--data", "faces", "--epochs", "1", "--image-size", "16", "--padding", "same", "--space", str(space),
        "--directory", str(tmp_path / "results"), "--project-name", "local", *extra,
    ]  # fmt: skip


def _env(tmp_path):
    return {**os.environ, "TFPIPELINE_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.slow  # a chief and two worker processes, 29 s; run with -m slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPU cores")
def test_two_workers_on_cpu_finish_the_search_with_the_usual_results(tmp_path):
    done = subprocess.run(
        _command(tmp_path, "--max-trials", "4", "--workers", "2"),
        capture_output=True, text=True, timeout=600, env=_env(tmp_path), check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "worker local-1 on CPU cores" in out and "worker local-2 on CPU cores" in out
    trials = pd.read_csv(tmp_path / "results" / "local" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 4 and set(trials["status"]) == {"COMPLETED"} and trials["trial_id"].is_unique
    ran = {w: out.count(f"[local-{w}] trial ") for w in (1, 2)}
    assert all(count > 0 for count in ran.values()), ran  # both workers trained
    assert (tmp_path / "results" / "local" / "best.yaml").is_file()


@pytest.mark.slow  # 15 s of process start-ups; run with -m slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPU cores")
def test_ctrl_c_stops_the_chief_and_every_worker(tmp_path):
    launcher = subprocess.Popen(
        _command(tmp_path, "--max-trials", "50", "--epochs", "30", "--workers", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path),
        start_new_session=True,  # its own process group, like a shell job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        lines = []
        while time.monotonic() < deadline:
            line = launcher.stdout.readline()
            lines.append(line)
            if "] trial " in line:  # a worker is training
                break
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 3, "".join(lines)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert launcher.wait(timeout=60) == 130
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
