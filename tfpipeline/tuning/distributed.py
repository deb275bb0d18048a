"""Distributed search: KerasTuner's chief/worker mode, with guards against its known hangs.

How it works: one **chief** process owns the oracle (the search state, `tuner_results/<project>`)
and serves it over gRPC; any number of **workers** ask it for trials, train them and report
back. Run the SAME `tfpipeline tune ...` command everywhere (same data, flags and --space), adding
the role::

    # machine A (chief; cheap, never trains): listens on all interfaces, port 8000
    tfpipeline tune --model small_cnn --tuner random --max-trials 40 ... --role chief --oracle 0.0.0.0:8000
    # machines B, C, ... (one worker per machine or per GPU set), pointing at A
    tfpipeline tune --model small_cnn --tuner random --max-trials 40 ... --role worker --oracle A:8000 \
        --worker-id b1

`--role/--oracle/--worker-id` just set KerasTuner's own variables KERASTUNER_TUNER_ID ("chief" or
the worker id), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT before the tuner is built, so
setting those variables yourself works too. Only the chief writes and exports results (when
the last trial is done). Hyperband workers reload each other's checkpoints: give them a shared
`--directory`. Each worker trains its trials under MirroredStrategy when it sees several GPUs.

Guards (KerasTuner 1.4.8 issues #254, #915, and the chief/worker races behind them):

- the chief exits once the oracle has said "stop", no trial is running and every worker that
  asked for work was told to stop (and at least `--num-workers` workers were), after a short
  grace period that answers late workers with "stop" instead of leaving them waiting;
- `--chief-timeout MINUTES` bounds the chief (a worker that died mid-trial would otherwise keep
  it waiting forever); unfinished trials stay RUNNING and are re-run when the search resumes;
- a worker checks it can reach the chief before loading data, and every call to the chief has a
  deadline of `--rpc-timeout` seconds (KerasTuner's is 60 min), so a worker whose chief is gone
  fails with a message instead of hanging; a restarted worker with the same `--worker-id` gets
  its unfinished trial back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from tfpipeline.errors import UserError

ROLES = ("chief", "worker")
ENV_ID, ENV_IP, ENV_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"


@dataclass(frozen=True)
class DistributedSettings:
    """`--role`, `--oracle HOST:PORT`, `--worker-id` and the guard timeouts."""

    role: str | None = None
    oracle: str | None = None
    worker_id: str | None = None
    num_workers: int = 0
    rpc_timeout: float = 600.0  # seconds
    chief_timeout: float | None = None  # minutes
    grace: float = 3.0  # seconds the chief keeps answering "stop" after the search ended


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--oracle must be HOST:PORT (e.g. 10.0.0.5:8000), got '{text}'")
    return host.strip("[]"), int(port)


def configure(settings: DistributedSettings) -> str | None:
    """Set KerasTuner's variables from the settings; return the role in force (None: local).

    Variables already in the environment are honoured when no --role is given.
    """
    if settings.role is not None:
        if settings.role not in ROLES:
            raise UserError(f"--role must be chief or worker, got '{settings.role}'")
        if not settings.oracle:
            raise UserError(f"--role {settings.role} needs --oracle HOST:PORT (the chief's address)")
        host, port = parse_address(settings.oracle)
        if settings.role == "chief":
            tuner_id = "chief"
        else:
            tuner_id = settings.worker_id or f"worker-{socket.gethostname()}-{os.getpid()}"
            if "chief" in tuner_id:
                raise UserError(
                    f"--worker-id must not contain 'chief' (KerasTuner reads that as the chief): {tuner_id}"
                )
        os.environ[ENV_ID], os.environ[ENV_IP], os.environ[ENV_PORT] = tuner_id, host, str(port)
    elif settings.oracle or settings.worker_id:
        raise UserError("--oracle and --worker-id need --role chief or --role worker")
    return current_role()


def current_role() -> str | None:
    if ENV_IP not in os.environ:
        return None
    missing = [name for name in (ENV_PORT, ENV_ID) if name not in os.environ]
    if missing:
        raise UserError(f"{ENV_IP} is set but {' and '.join(missing)} not; set all three or none")
    return "chief" if "chief" in os.environ[ENV_ID] else "worker"


def tuner_id() -> str:
    return os.environ.get(ENV_ID, "tuner0")


def chief_address() -> str:
    return f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}"


def wait_for_chief(timeout: float) -> None:
    """Worker start-up: fail clearly when the chief does not answer within `timeout` seconds."""
    import grpc

    channel = grpc.insecure_channel(chief_address())
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UserError(
            f"no chief answering at {chief_address()} after {timeout:.0f}s; start it first"
        ) from None
    finally:
        channel.close()


def limit_rpc_wait(seconds: float) -> None:
    """KerasTuner's client waits 60 min per call for an absent chief; use `seconds` instead."""
    from tfpipeline.tuning import kt_compat

    kt_compat.set_rpc_timeout(seconds)


@dataclass
class ServeReport:
    workers: list[str]
    timed_out: bool
    seconds: float


def serve(oracle, settings: DistributedSettings) -> ServeReport:
    """Run the chief's oracle server until the search is over (see the module docstring)."""
    from concurrent import futures

    import grpc

    from tfpipeline.tuning import kt_compat

    lock = threading.Lock()
    seen: set[str] = set()
    stopped: set[str] = set()

    class Servicer(kt_compat.OracleServicer):
        def CreateTrial(self, request, context):  # noqa: N802 (gRPC method name)
            trial = self.oracle.create_trial(request.tuner_id)
            with lock:
                seen.add(request.tuner_id)
                if trial.status == kt_compat.TrialStatus.STOPPED:
                    stopped.add(request.tuner_id)
                    self.stop_triggered = True
            if trial.status == kt_compat.TrialStatus.RUNNING:
                print(f"chief: trial {trial.trial_id} -> {request.tuner_id}", flush=True)
            return kt_compat.create_trial_response(trial)

        def EndTrial(self, request, context):  # noqa: N802
            response = super().EndTrial(request, context)
            trial = self.oracle.trials[request.trial.trial_id]
            score = f" {self.oracle.objective.name}={trial.score:.4f}" if trial.score is not None else ""
            print(f"chief: trial {trial.trial_id} {trial.status}{score}", flush=True)
            return response

    servicer = Servicer(oracle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    kt_compat.add_servicer(servicer, server)
    address = chief_address()
    if not server.add_insecure_port(address):
        raise UserError(f"chief cannot listen on {address} (port in use, or not this machine's address?)")
    server.start()
    print(f"chief: serving the search at {address}", flush=True)
    start = time.monotonic()
    deadline = start + settings.chief_timeout * 60 if settings.chief_timeout else None
    done_since: float | None = None
    timed_out = False
    try:
        while True:
            time.sleep(0.2)
            with lock:
                finished = (
                    servicer.stop_triggered
                    and kt_compat.chief_finished(oracle)
                    and stopped >= seen
                    and len(stopped) >= settings.num_workers
                )
            now = time.monotonic()
            if finished:
                done_since = done_since or now
                if now - done_since >= settings.grace:
                    break
            else:
                done_since = None
            if deadline is not None and now >= deadline:
                running = sorted(t.trial_id for t in oracle.ongoing_trials.values())
                print(
                    f"chief: --chief-timeout reached; stopping with trial(s) {running or 'none'} unfinished "
                    "(they re-run when the search resumes)",
                    flush=True,
                )
                timed_out = True
                break
    finally:
        server.stop(grace=2).wait()
    return ServeReport(sorted(seen), timed_out, time.monotonic() - start)


def strategy_for(devices: tuple[str, ...] | list[str] = ()):
    """MirroredStrategy over `devices`, or over all GPUs when several are visible; else None."""
    import tensorflow as tf

    if devices:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return None
