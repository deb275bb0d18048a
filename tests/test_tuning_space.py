"""Search spaces and the tuner's oracle, without training: every model's declared space, space
files narrowing or overriding it (and their errors), grid checks, `apply_values` on a config,
and oracle state across reloads (orphaned trials, grid position, the time-budget deadline).

The searches that train are in test_tuning.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.errors import UserError
from tfpipeline.models import MODELS
from tfpipeline.tuning import space as space_module
from tfpipeline.tuning.hparams import apply_values

# --------------------------------------------------------------------------- spaces (no training)


def test_every_registered_model_has_a_search_space_that_builds_configs(tmp_path):
    base = RunConfig()
    for name in MODELS:
        config = RunConfig(model=ModelConfig(name=name))
        space = space_module.load_space(name, None, config)
        assert {"lr", "batch_size", "flip"} <= set(space)  # fast_resnet's recipe fixes SGD
        first = {n: (p.values[0] if p.kind == "choice" else p.low) for n, p in space.items()}
        tuned = apply_values(config, first)
        assert type(tuned) is type(base) and tuned.model.name == name
        assert tuned.train.lr == space["lr"].low


def test_apply_values_changes_only_the_tuned_fields():
    base = RunConfig(  # off the defaults, so "unchanged" is not "reset to the default"
        data=DataConfig(image_size=(16, 16), batch_size=8),
        model=ModelConfig(padding="same", filters=(4, 8, 8, 8), dense_units=(8, 8, 8)),
        train=TrainConfig(optimizer="adam"),
    )
    values = {"filters_1": 16, "dense_2": 32, "lr": 0.01, "flip": True, "batch_size": 16, "tuner/epochs": 3}
    config = apply_values(base, values)
    assert config.model.filters == (16, 8, 8, 8) and config.model.dense_units == (8, 32, 8)
    assert config.train.lr == 0.01 and config.data.augment.flip and config.data.batch_size == 16
    assert config.data.image_size == base.data.image_size and config.train.optimizer == base.train.optimizer


def test_space_file_narrows_and_overrides(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {min: 1e-4, max: 1e-2, sampling: log}\noptimizer: [sgd, adam]\nbatchnorm: [true]\n")
    space = space_module.load_space("small_cnn", path, RunConfig())
    assert (space["lr"].low, space["lr"].high, space["lr"].sampling) == (1e-4, 1e-2, "log")
    assert space["optimizer"].values == ("sgd", "adam") and space["batchnorm"].values == (True,)
    assert "filters_1" in space  # the rest of the declared space stays
    assert space["dropout_rate"].when == ("dropout", (True,))  # declared condition kept
    only = space_module.load_space("small_cnn", {"tune_only": True, "lr": [0.001, 0.01]}, RunConfig())
    assert list(only) == ["lr"] and only["lr"].values == (0.001, 0.01)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"lr": [0.01], "bogus": [1], "filterz_1": [8]}, "unknown hyperparameter(s) bogus, filterz_1"),
        ({"rotation": [0.0, 1.5]}, "rotation=1.5 is not allowed"),
        ({"lr": {"min": 0.1}}, "needs both min and max"),
        ({"optimizer": {"min": 1, "max": 2}}, "numeric field"),
        ({"batch_size": [16, "big"]}, "expected int"),
    ],
)
def test_space_file_errors_name_the_problem(override, message):
    with pytest.raises(UserError) as excinfo:
        space_module.load_space("small_cnn", override, RunConfig())
    assert message in str(excinfo.value)


def test_grid_needs_discrete_values():
    with pytest.raises(UserError, match="lr is continuous"):
        space_module.check_grid(space_module.load_space("small_cnn", {"dropout_rate": [0.2]}, RunConfig()))
    narrowed = space_module.load_space("small_cnn", {"tune_only": True, "lr": [0.001, 0.01]}, RunConfig())
    space_module.check_grid(narrowed)
    assert space_module.grid_size(narrowed) == 2


# --------------------------------------------------------------------------- oracle state (no training)


def _toy_oracle(tuner: str, project: Path, max_trials: int | None = 3):
    import keras_tuner

    from tfpipeline.tuning.oracles import make_oracle

    oracle = make_oracle(tuner, keras_tuner.Objective("val_auc", "max"), seed=1, max_trials=max_trials)
    oracle._set_project_dir(str(project), "state")
    hp = oracle.get_space()
    hp.Choice("a", [1, 2, 3])
    oracle.update_space(hp)
    return oracle


def _finish(oracle, trial, value: float) -> None:
    oracle.update_trial(trial.trial_id, {"val_auc": value})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


def test_reload_requeues_an_orphaned_running_trial_with_clean_metrics(tmp_path):
    oracle = _toy_oracle("random", tmp_path)
    _finish(oracle, oracle.create_trial("tuner0"), 0.5)
    running = oracle.create_trial("tuner0")
    oracle.update_trial(running.trial_id, {"val_auc": 0.9})  # partial result, then the crash
    # The crash came between KerasTuner's trial.json and oracle.json writes: not "ongoing".
    state_file = tmp_path / "state" / "oracle.json"
    state = json.loads(state_file.read_text())
    state["ongoing_trials"] = {}
    state_file.write_text(json.dumps(state))

    resumed = _toy_oracle("random", tmp_path)
    resumed.reload()
    assert resumed.recovered == [running.trial_id]
    again = resumed.create_trial("tuner0")
    assert (
        again.trial_id == running.trial_id and again.hyperparameters.values == running.hyperparameters.values
    )
    assert not again.metrics.exists("val_auc")
    _finish(resumed, again, 0.7)
    assert resumed.trials[running.trial_id].score == 0.7


def test_grid_position_survives_reload(tmp_path):
    oracle = _toy_oracle("grid", tmp_path, max_trials=None)
    _finish(oracle, oracle.create_trial("tuner0"), 0.5)
    seen = [1]
    resumed = _toy_oracle("grid", tmp_path, max_trials=None)
    resumed.reload()  # KerasTuner 1.4.8 alone raises KeyError in the next create_trial
    while True:
        trial = resumed.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        seen.append(trial.hyperparameters.values["a"])
        _finish(resumed, trial, 0.6)
    assert seen == [1, 2, 3]


def test_time_budget_makes_the_oracle_stop(tmp_path):
    oracle = _toy_oracle("random", tmp_path, max_trials=10)
    oracle.deadline = time.monotonic() - 1
    assert oracle.create_trial("tuner0").status == "STOPPED" and oracle.budget_exhausted
    assert not oracle.trials
