"""Hyperparameter search on KerasTuner: `tfpipeline tune`.

- :mod:`~tfpipeline.tuning.space`: the search space of every registered model (declared once)
  and `--space FILE.yaml` overrides; :mod:`~tfpipeline.tuning.hparams`: declarations and
  values -> RunConfig via `dataclasses.replace`;
- :mod:`~tfpipeline.tuning.hypermodel`: the KerasTuner HyperModel (build/fit through the
  training stage) and the once-per-search data;
- :mod:`~tfpipeline.tuning.search`: `run_search` (settings, project folder, export);
  :mod:`~tfpipeline.tuning.oracles`: resume fixes and the time budget;
  :mod:`~tfpipeline.tuning.tuner`: one fresh Keras session per trial;
- :mod:`~tfpipeline.tuning.results`: trials.csv, best.yaml, plots, HParams logs, leaderboard;
- :mod:`~tfpipeline.tuning.distributed`: chief/worker search across machines.

Library use::

    from tfpipeline.config import RunConfig
    from tfpipeline.tuning import SearchSettings, run_search

    result = run_search(RunConfig(), SearchSettings(tuner="random", max_trials=5))
    print(result.exports.best_yaml)
"""

from __future__ import annotations

__all__ = ["SearchResult", "SearchSettings", "TrialEvent", "run_search"]


def __getattr__(name: str):
    # Lazy, so `tfpipeline.tuning.space` / `.results` load without TensorFlow.
    if name in __all__:
        from tfpipeline.tuning import search

        return getattr(search, name)
    raise AttributeError(name)
