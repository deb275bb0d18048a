"""`tfpipeline tune --workers N`: a parallel search on this machine, in N + 1 processes.

It is the distributed search of :mod:`~tfpipeline.tuning.distributed` on loopback: one chief
process serves the search at 127.0.0.1:<free port> (it never trains) and N worker processes
train trials. Each worker gets its own share of the hardware:

- with GPUs visible, worker i sees one GPU (`CUDA_VISIBLE_DEVICES`), so at most one worker per
  GPU;
- on CPUs, worker i is pinned to its own share of this process's CPU cores
  (`os.sched_setaffinity`), and TensorFlow sizes its thread pools from that affinity.

The chief writes the same results a single-process search writes (trials.csv, best.yaml, plots,
HParams logs). Ctrl-C (or any worker failing) stops every process; the search state stays on
disk and the same command resumes it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tfpipeline.errors import UserError

# Flags of `tune` that the local launcher sets itself or that make no sense per process.
LAUNCHER_FLAGS = {
    "--workers": 1,
    "--role": 1,
    "--oracle": 1,
    "--worker-id": 1,
    "--num-workers": 1,
    "--train-best": 0,
}
STOP_GRACE = 10.0  # seconds a process gets to stop after SIGINT before it is killed


@dataclass(frozen=True)
class WorkerPlan:
    """Where each worker runs: a GPU index, or a set of CPU cores."""

    gpus: tuple[str, ...]  # one visible-device id per worker, or empty
    cores: tuple[tuple[int, ...], ...]  # one core set per worker, or empty

    def describe(self, index: int) -> str:
        return (
            f"GPU {self.gpus[index]}" if self.gpus else f"CPU cores {','.join(map(str, self.cores[index]))}"
        )


def plan_workers(workers: int, cores: Sequence[int], gpus: Sequence[str]) -> WorkerPlan:
    """Share GPUs (one each) or CPU cores (an even split) among `workers`.

    Raises:
        UserError: more workers than GPUs, or than CPU cores when there is no GPU.
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if gpus:
        if workers > len(gpus):
            raise UserError(
                f"--workers {workers}: only {len(gpus)} GPU(s) visible; run at most one worker per GPU"
            )
        return WorkerPlan(gpus=tuple(gpus[:workers]), cores=())
    cores = sorted(cores)
    if workers > len(cores):
        raise UserError(
            f"--workers {workers}: this process may use {len(cores)} CPU core(s) and each worker needs at "
            f"least one; use --workers {len(cores)} or fewer"
        )
    share = len(cores) // workers
    return WorkerPlan(gpus=(), cores=tuple(tuple(cores[i * share : (i + 1) * share]) for i in range(workers)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strip_launcher_flags(argv: Sequence[str]) -> list[str]:
    """`argv` without the flags the launcher sets for each process (`--workers N`, `--role ...`)."""
    out, skip = [], 0
    for item in argv:
        if skip:
            skip -= 1
            continue
        name = item.split("=", 1)[0]
        if name in LAUNCHER_FLAGS:
            skip = 0 if "=" in item else LAUNCHER_FLAGS[name]
            continue
        out.append(item)
    return out


def visible_gpus() -> list[str]:
    """GPU ids this process may use (CUDA_VISIBLE_DEVICES, else all TensorFlow sees)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import tensorflow as tf

    return [str(i) for i in range(len(tf.config.list_physical_devices("GPU")))]


def run_local_search(argv: Sequence[str], workers: int, *, timeout_minutes: float | None = None) -> int:
    """Run `tfpipeline tune <argv>` as a chief plus `workers` workers on this machine.

    Args:
        argv: the `tune` command line (with or without `--workers`).
        workers: how many training processes.
        timeout_minutes: stop everything after this long (None: no limit).

    Returns:
        0 when every process finished cleanly, else the first non-zero exit code (130 on Ctrl-C).
    """
    plan = plan_workers(workers, sorted(os.sched_getaffinity(0)), visible_gpus())
    base = [sys.executable, "-m", "tfpipeline.cli", *strip_launcher_flags(argv)]
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    print(f"[tune] local search: chief at {address}, {workers} worker(s)", flush=True)
    processes = [
        (
            "chief",
            subprocess.Popen(
                [*base, "--role", "chief", "--oracle", address, "--num-workers", str(workers)],
                env=env,
            ),
        )
    ]
    for i in range(workers):
        worker_env = dict(env)
        if plan.gpus:
            worker_env["CUDA_VISIBLE_DEVICES"] = plan.gpus[i]
        cores = plan.cores[i] if plan.cores else None
        command = [*base, "--role", "worker", "--oracle", address, "--worker-id", f"local-{i + 1}"]
        print(f"[tune] worker local-{i + 1} on {plan.describe(i)}", flush=True)
        processes.append(
            (
                f"local-{i + 1}",
                subprocess.Popen(
                    command,
                    env=worker_env,
                    preexec_fn=(lambda cores=cores: os.sched_setaffinity(0, cores)) if cores else None,
                ),
            )
        )
    return _supervise(processes, timeout_minutes)


def _supervise(processes: list[tuple[str, subprocess.Popen]], timeout_minutes: float | None) -> int:
    deadline = time.monotonic() + timeout_minutes * 60 if timeout_minutes else None
    try:
        while True:
            codes = {name: proc.poll() for name, proc in processes}
            failed = [(name, code) for name, code in codes.items() if code not in (None, 0)]
            if failed:
                name, code = failed[0]
                print(f"[tune] {name} exited with {code}; stopping the others", file=sys.stderr, flush=True)
                _stop(processes)
                return code
            if all(code == 0 for code in codes.values()):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                print("[tune] time limit reached; stopping every process", file=sys.stderr, flush=True)
                _stop(processes)
                return 124
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("[tune] interrupted: stopping the chief and every worker", file=sys.stderr, flush=True)
        _stop(processes)
        return 130


def _stop(processes: list[tuple[str, subprocess.Popen]]) -> None:
    """SIGINT to every live process, then SIGKILL to any still running after the grace period."""
    for _, proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    end = time.monotonic() + STOP_GRACE
    for _, proc in processes:
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
