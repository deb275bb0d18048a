"""`tfpipeline tune`: hyperparameter search with KerasTuner (see tfpipeline.tuning)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tfpipeline.errors import UserError
from tfpipeline.flags import (
    add_augment_flags,
    add_data_flags,
    add_model_flags,
    add_train_flags,
    resolve_run_config,
)

TUNERS = ("random", "bayesian", "hyperband", "grid")
# Flags of `tune` itself; every other flag is a RunConfig flag shared with `train`.
TUNE_KEYS = {
    "tuner",
    "max_trials",
    "max_epochs",
    "objective",
    "directory",
    "project_name",
    "space",
    "time_budget",
    "overwrite",
    "summary",
    "top",
    "train_best",
    "factor",
    "role",
    "oracle",
    "worker_id",
    "num_workers",
    "rpc_timeout",
    "chief_timeout",
    "trials_per_process",
    "workers",
    "argv",
}
# A search process that used up its --trials-per-process quota exits with this code when it is
# a hand-over child (more trials remain); the parent then starts the next one.
EXIT_MORE_TRIALS = 75
CHILD_ENV = "TFPIPELINE_TUNE_CHILD"
DEADLINE_ENV = "TFPIPELINE_TUNE_DEADLINE"  # wall-clock end of --time-budget, shared by children


def _base_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in TUNE_KEYS})


def _project(args: argparse.Namespace) -> Path:
    from tfpipeline.config import ModelConfig

    model = getattr(args, "model", None) or ModelConfig().name
    return Path(args.directory) / (args.project_name or f"{model}_{args.tuner}")


def cmd_tune(args: argparse.Namespace) -> int:
    if args.summary:
        from tfpipeline.tuning.results import summary_text

        print(summary_text(_project(args), top=args.top))
        return 0

    from tfpipeline.tuning.distributed import DistributedSettings
    from tfpipeline.tuning.search import SearchSettings, run_search

    base = resolve_run_config(_base_args(args))  # bad options fail here, before any process starts
    if args.workers:
        if args.role is not None:
            raise UserError("--workers starts its own chief and workers; it cannot be combined with --role")
        from tfpipeline.tuning.local import run_local_search

        code = run_local_search(args.argv, args.workers, timeout_minutes=args.chief_timeout)
        if code != 0 or not args.train_best:
            return code
        return _train_best(_project(args) / "best.yaml", None)
    is_child = os.environ.get(CHILD_ENV) == "1"
    deadline = os.environ.get(DEADLINE_ENV)
    time_budget = args.time_budget
    if deadline is not None:
        time_budget = max(0.0, (float(deadline) - time.time()) / 60)
    elif time_budget:
        deadline = str(time.time() + time_budget * 60)
    quota = args.trials_per_process if (args.trials_per_process > 0 and args.role is None) else None
    settings = SearchSettings(
        tuner=args.tuner,
        max_trials=args.max_trials,
        objective=args.objective,
        directory=args.directory,
        project_name=args.project_name,
        space=args.space,
        time_budget=time_budget,
        overwrite=args.overwrite and not is_child,
        max_epochs=args.max_epochs,
        factor=args.factor,
        trial_quota=quota,
    )
    dist = DistributedSettings(
        role=args.role,
        oracle=args.oracle,
        worker_id=args.worker_id,
        num_workers=args.num_workers,
        rpc_timeout=args.rpc_timeout,
        chief_timeout=args.chief_timeout,
    )
    result = run_search(base, settings, dist=dist)
    if result.stopped_by_quota:
        if is_child:
            return EXIT_MORE_TRIALS
        code = _continue_in_fresh_processes(args, deadline)
        if code != 0 or not args.train_best:
            return code
        return _train_best(_project(args) / "best.yaml", result)
    if result.role == "worker":
        print(f"worker done: ran {result.trials_run} trial(s); results are exported by the chief")
        return 0
    exports = result.exports
    from tfpipeline.tuning.results import summary_text

    print()
    print(summary_text(result.project, top=args.top))
    print(f"\ntrials: {exports.trials_csv}")
    if exports.best_yaml is None:
        print("no trial finished; nothing to train")
        return 0 if not args.train_best else 1
    print(f"best:   {exports.best_yaml}  (tfpipeline train --config {exports.best_yaml})")
    if args.train_best:
        return _train_best(exports.best_yaml, result)
    return 0


def _train_best(best_yaml: Path, result) -> int:
    from tfpipeline.cli.model_commands import report_training
    from tfpipeline.tuning.search import fresh_session
    from tfpipeline.workflow import run_training

    if not best_yaml.is_file():
        print("no trial finished; nothing to train")
        return 1
    fresh_session()
    print(f"\nretraining the best trial like `tfpipeline train --config {best_yaml}`")
    report_training(run_training(resolve_run_config(argparse.Namespace(config=str(best_yaml)))))
    return 0


def _continue_in_fresh_processes(args: argparse.Namespace, deadline: str | None) -> int:
    """Run the rest of the search in fresh processes, `--trials-per-process` trials each.

    Keras leaves each fit's traced graphs behind (about 18 MB per small trial, even after
    `clear_session`), so a long search in one process grows without bound. The search state is
    on disk and resumable, so handing over to a new process every few trials keeps every
    process's memory flat at the cost of one start-up per hand-over.
    """
    argv = [a for a in args.argv if a not in ("--overwrite", "--train-best")]
    env = {**os.environ, CHILD_ENV: "1"}
    if deadline is not None:
        env[DEADLINE_ENV] = deadline
    handovers = 0
    while True:
        handovers += 1
        print(
            f"\n[tune] {args.trials_per_process} trial(s) done in this process; continuing in a fresh one "
            f"(#{handovers}) to keep memory flat",
            flush=True,
        )
        code = subprocess.call([sys.executable, "-m", "tfpipeline.cli", *argv], env=env)
        if code != EXIT_MORE_TRIALS:
            return code


def register(commands) -> None:
    """Add `tune` to the top-level subparsers."""
    tune = commands.add_parser(
        "tune",
        help="hyperparameter search (KerasTuner): resumable, exported, distributed",
        argument_default=argparse.SUPPRESS,
        description="Search the registered model's hyperparameter space (tfpipeline/tuning/space.py) around "
        "the configuration given by the usual `train` flags. Re-running the same command resumes the "
        "search. Results land in DIRECTORY/PROJECT: trials.csv, best.yaml (for `train --config`), "
        "objective.png, hparams.png, tensorboard/ (HParams), summary.txt.",
    )
    search = tune.add_argument_group("search")
    search.add_argument("--tuner", choices=TUNERS, default="random", help="search algorithm (default random)")
    search.add_argument(
        "--max-trials",
        type=int,
        default=None,
        help="trials to run in total (default 10; grid: the whole grid; hyperband: its schedule)",
    )
    search.add_argument(
        "--max-epochs", type=int, default=None, help="hyperband: most epochs of one trial (default --epochs)"
    )
    search.add_argument(
        "--objective",
        default=None,
        help="metric to optimise, e.g. val_auc, val_loss, val_accuracy (default: val_auc for two "
        "classes, else val_accuracy); *loss is minimised, the rest maximised",
    )
    search.add_argument(
        "--directory", default="tuner_results", help="parent of project folders (default tuner_results)"
    )
    search.add_argument("--project-name", default=None, help="project folder (default MODEL_TUNER)")
    search.add_argument(
        "--space",
        default=None,
        metavar="FILE.yaml",
        help="override/narrow the model's search space, e.g. `lr: {min: 1e-4, max: 1e-2, "
        "sampling: log}`, `optimizer: [sgd, adam]`, `tune_only: true`",
    )
    search.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no new trial after this many minutes (then export and exit)",
    )
    search.add_argument(
        "--overwrite", action="store_true", default=False, help="discard the project and start over"
    )
    search.add_argument("--factor", type=int, default=3, help="hyperband reduction factor (default 3)")
    search.add_argument(
        "--summary",
        action="store_true",
        default=False,
        help="print the leaderboard of --project-name and exit",
    )
    search.add_argument("--top", type=int, default=10, help="leaderboard length (default 10)")
    search.add_argument(
        "--train-best",
        action="store_true",
        default=False,
        help="afterwards, train the best configuration like `tfpipeline train --config best.yaml`",
    )
    search.add_argument(
        "--trials-per-process",
        type=int,
        default=5,
        metavar="N",
        help="hand the search over to a fresh process every N trials, keeping memory flat "
        "(Keras keeps ~18 MB of traced graphs per trial); 0 runs every trial in this process",
    )
    search.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run the search in parallel on this machine: a chief plus N worker processes, each on its own "
        "GPU or share of the CPU cores (see tfpipeline/tuning/local.py)",
    )
    dist = tune.add_argument_group("distributed search (see tfpipeline/tuning/distributed.py)")
    dist.add_argument(
        "--role",
        choices=("chief", "worker"),
        default=None,
        help="chief serves the search, workers train trials",
    )
    dist.add_argument("--oracle", default=None, metavar="HOST:PORT", help="the chief's address")
    dist.add_argument("--worker-id", default=None, help="stable worker name (default worker-HOST-PID)")
    dist.add_argument("--num-workers", type=int, default=0, help="chief: wait for at least this many workers")
    dist.add_argument(
        "--rpc-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="worker: longest wait for the chief (default 600)",
    )
    dist.add_argument(
        "--chief-timeout",
        type=float,
        default=None,
        metavar="MINUTES",
        help="chief: stop serving after this long even if trials are unfinished",
    )
    add_model_flags(tune)
    add_data_flags(tune)
    add_augment_flags(tune)
    add_train_flags(tune)
    tune.set_defaults(func=cmd_tune)
