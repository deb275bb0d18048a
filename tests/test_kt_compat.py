"""Every KerasTuner internal tfpipeline patches still has the shape the patch expects.

Each test pins one patch of tfpipeline/tuning/kt_compat.py to the upstream structure it relies
on, so upgrading keras-tuner fails here, by name, rather than in a resumed or distributed search.
"""

from __future__ import annotations

import inspect

import keras
import keras_tuner
import pytest

from tfpipeline.tuning import kt_compat


def _oracle(cls=keras_tuner.oracles.RandomSearchOracle, **kwargs):
    oracle = cls(objective=keras_tuner.Objective("val_auc", "max"), max_trials=4, seed=1, **kwargs)
    hp = keras_tuner.HyperParameters()
    hp.Choice("units", [1, 2, 3])
    oracle.update_space(hp)
    return oracle


def test_version_is_the_pinned_one():
    assert keras_tuner.__version__ == kt_compat.SUPPORTED_VERSION


def test_a_queued_trial_is_handed_out_again(tmp_path):
    oracle = _oracle()
    oracle._set_project_dir(str(tmp_path), "p")
    assert kt_compat.retry_queue(oracle) == []
    first = oracle.create_trial("worker-1")
    oracle.ongoing_trials.pop("worker-1")  # the worker died mid-trial
    kt_compat.set_retry_queue(oracle, [first.trial_id])
    again = oracle.create_trial("worker-2")
    assert again.trial_id == first.trial_id  # create_trial reads the queue we set
    assert kt_compat.retry_queue(oracle) == []


def test_fresh_metrics_is_kerastuners_tracker():
    tracker = kt_compat.fresh_metrics()
    tracker.register("val_auc", "max")
    tracker.update("val_auc", 0.5, step=0)
    assert tracker.get_best_value("val_auc") == 0.5


def test_grid_state_round_trips_the_linked_list(tmp_path):
    oracle = _oracle(keras_tuner.oracles.GridSearchOracle)
    oracle._set_project_dir(str(tmp_path), "p")
    for tuner_id in ("a", "b"):
        trial = oracle.create_trial(tuner_id)
        assert trial.status == kt_compat.TrialStatus.RUNNING
    state = kt_compat.grid_state(oracle)
    assert len(state["grid_order"]) == 2 and isinstance(state["grid_populate_next"], list)
    fresh = _oracle(keras_tuner.oracles.GridSearchOracle)
    kt_compat.restore_grid_state(fresh, state)
    assert kt_compat.grid_state(fresh) == state


def test_rpc_timeout_is_a_module_number_the_client_reads():
    from keras_tuner.src.distribute import oracle_client

    before = oracle_client.TIMEOUT
    try:
        kt_compat.set_rpc_timeout(12.5)
        assert oracle_client.TIMEOUT == 12.5
        assert "TIMEOUT" in inspect.getsource(oracle_client.OracleClient)
    finally:
        oracle_client.TIMEOUT = before


def test_chief_pieces_exist_with_the_used_signatures():
    assert {"CreateTrial", "EndTrial"} <= set(dir(kt_compat.OracleServicer))
    assert list(inspect.signature(kt_compat.chief_finished).parameters) == ["oracle"]
    trial = kt_compat.Trial(keras_tuner.HyperParameters(), trial_id="7", status=kt_compat.TrialStatus.STOPPED)
    response = kt_compat.create_trial_response(trial)
    assert response.trial.trial_id == "7"
    assert kt_compat.is_chief_oracle() is False  # no KERASTUNER_* variables in tests


def test_save_best_epoch_and_maybe_distribute():
    assert issubclass(kt_compat.SaveBestEpoch, keras.callbacks.Callback)
    with kt_compat.maybe_distribute(None):
        pass


def test_other_versions_are_refused(monkeypatch):
    import importlib
    import sys

    monkeypatch.setattr(keras_tuner, "__version__", "9.9.9")
    monkeypatch.delitem(sys.modules, "tfpipeline.tuning.kt_compat")
    with pytest.raises(ImportError, match=r"keras-tuner==1\.4\.8"):
        importlib.import_module("tfpipeline.tuning.kt_compat")
