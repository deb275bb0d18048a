"""The out-of-domain (OOD) stage: does an image look like the training data at all?

A classifier answers every input, a photo of a car included, with a confident class. This stage
fits a detector on the trained model and its training split, calibrates an acceptance
threshold on validation (accept 95 % of in-domain images by default), and stores both in the
run folder (`RUN/ood/`). `predict` then reports `ood_score` and `in_domain` per image, the
exported SavedModel returns them beside the probabilities (computed in its graph), and
`evaluate --ood-data FOLDER` measures how well they separate FOLDER from the in-domain test set.

Typical use::

    from tfpipeline.ood import fit_run_detector, load_detector, OODScorer

    detector = fit_run_detector(run_path, model, config, scaling, method="mahalanobis")
    outputs, scores = OODScorer(model, config.model, detector).predict(dataset)
    accepted = scores <= detector.threshold

Methods (:mod:`~tfpipeline.ood.detectors`, :mod:`~tfpipeline.ood.autoencoder`): `mahalanobis`
(the default), `energy`, `msp`, `autoencoder`. Modules: `views` (the model's output, embedding
and head input in one pass), `detectors` (fitting and scoring maths), `autoencoder`, `store`
(the run folder files), `scorer` (model + detector, used everywhere), `fit` (fit and calibrate),
`images` (unlabelled image sets), `compare` (every method side by side).

It sits after training and before evaluation: it needs only the model and the data, and
evaluation, predict and export use it. Names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Detector": "store",
    "ImageSet": "images",
    "OODScorer": "scorer",
    "compare_methods": "compare",
    "fit_detector": "fit",
    "fit_run_detector": "fit",
    "has_detector": "store",
    "load_detector": "store",
    "load_images": "images",
    "run_scorer": "scorer",
    "save_detector": "store",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tfpipeline.ood' has no attribute '{name}'")
    return getattr(importlib.import_module(f"tfpipeline.ood.{_WHERE[name]}"), name)
