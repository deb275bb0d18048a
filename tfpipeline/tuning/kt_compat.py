"""Every use of KerasTuner's private internals, in one place, for the pinned version only.

tfpipeline fixes resume, grid-order and distributed-search defects of KerasTuner 1.4.8 (see
:mod:`~tfpipeline.tuning.oracles`, :mod:`~tfpipeline.tuning.tuner` and
:mod:`~tfpipeline.tuning.distributed`). Those fixes need names that are not KerasTuner's public
API (`keras_tuner.src.*`, an oracle's `_retry_queue`, GridSearch's `_ordered_ids`, the RPC
client's `TIMEOUT`). Nothing else in tfpipeline imports `keras_tuner.src` or touches a private
attribute: this module does, behind small named functions, and `tests/test_kt_compat.py` fails
as soon as an upgrade changes any of their shapes.

Importing this module with another KerasTuner version raises ImportError naming the pin, rather
than letting a patch misbehave silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras_tuner

SUPPORTED_VERSION = "1.4.8"

if keras_tuner.__version__ != SUPPORTED_VERSION:
    raise ImportError(
        f"tfpipeline's tuner needs keras-tuner=={SUPPORTED_VERSION} (its resume and distributed fixes "
        f"patch that version's internals); found {keras_tuner.__version__}. "
        f"Install the pinned version: pip install keras-tuner=={SUPPORTED_VERSION}"
    )

from keras_tuner.src import protos  # noqa: E402
from keras_tuner.src.distribute import oracle_chief, oracle_client  # noqa: E402
from keras_tuner.src.distribute import utils as dist_utils  # noqa: E402
from keras_tuner.src.engine import metrics_tracking, tuner_utils  # noqa: E402
from keras_tuner.src.engine import trial as trial_module  # noqa: E402
from keras_tuner.src.engine.tuner import maybe_distribute  # noqa: E402
from keras_tuner.src.tuners.gridsearch import LinkedList  # noqa: E402

Trial = trial_module.Trial
TrialStatus = trial_module.TrialStatus
SaveBestEpoch = tuner_utils.SaveBestEpoch
OracleServicer = oracle_chief.OracleServicer

__all__ = [
    "OracleServicer",
    "add_servicer",
    "SaveBestEpoch",
    "Trial",
    "TrialStatus",
    "chief_finished",
    "create_trial_response",
    "fresh_metrics",
    "grid_state",
    "is_chief_oracle",
    "maybe_distribute",
    "protos",
    "restore_grid_state",
    "retry_queue",
    "set_retry_queue",
    "set_rpc_timeout",
]


# -- oracles: the queue of interrupted trials to re-run (Oracle._retry_queue, a list of ids)


def retry_queue(oracle: Any) -> list[str]:
    return list(oracle._retry_queue)


def set_retry_queue(oracle: Any, trial_ids: list[str]) -> None:
    oracle._retry_queue = list(trial_ids)


def fresh_metrics() -> Any:
    """An empty per-trial metrics tracker (for a re-queued trial's restart)."""
    return metrics_tracking.MetricsTracker()


# -- GridSearchOracle's place in the grid (`_ordered_ids`, a LinkedList of trial ids, and
#    `_populate_next`, the trials whose grid neighbours come next), which it forgets on reload


def grid_state(oracle: Any) -> dict[str, list]:
    """A GridSearchOracle's place in the grid, JSON-ready."""
    return {"grid_order": list(_walk(oracle._ordered_ids)), "grid_populate_next": list(oracle._populate_next)}


def _walk(linked: Any) -> Iterator[str]:
    index = linked._next_index[None]
    while index is not None:
        yield linked._memory[index]
        index = linked._next_index[index]


def restore_grid_state(oracle: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`grid_state` saved (missing keys: an empty grid position)."""
    ordered = LinkedList()
    for trial_id in state.get("grid_order", []):
        ordered.insert(trial_id)
    oracle._ordered_ids = ordered
    oracle._populate_next = list(state.get("grid_populate_next", []))


# -- distributed search


def set_rpc_timeout(seconds: float) -> None:
    """A worker's longest wait for one chief call (KerasTuner's default is 60 minutes)."""
    oracle_client.TIMEOUT = seconds


def is_chief_oracle() -> bool:
    return dist_utils.is_chief_oracle()


def chief_finished(oracle: Any) -> bool:
    """KerasTuner's own test that a chief may exit (no trial running, the oracle said stop)."""
    return oracle_chief.exit_chief(oracle)


def create_trial_response(trial: Any) -> Any:
    return protos.get_service().CreateTrialResponse(trial=trial.to_proto())


def add_servicer(servicer: Any, server: Any) -> None:
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
