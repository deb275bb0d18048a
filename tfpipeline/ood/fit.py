"""Fit a run's out-of-domain detector and calibrate its threshold.

Fitting uses the training split, unaugmented and through the run's test-time augmentation (the
views the served probabilities come from); the threshold is the score accepting `accept`
(default 95 %) of the validation images. `tfpipeline train` calls :func:`fit_run_detector` after
the final metrics, and `tfpipeline ood fit RUN` calls it for runs made before (or to switch
method).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.config import OOD_METHODS, RunConfig
from tfpipeline.errors import UserError
from tfpipeline.ood import autoencoder as ae
from tfpipeline.ood.detectors import calibrate, fit_mahalanobis
from tfpipeline.ood.scorer import OODScorer
from tfpipeline.ood.store import Detector, save_detector

log = logging.getLogger(__name__)

# Training images a detector is fitted on at most: a Gaussian over a few hundred dimensions is
# well estimated long before that, and predicting all 45,000 CIFAR-10 training images through
# the run's test-time augmentation took 178 s, 12 % of the training time.
MAX_FIT_IMAGES = 10_000


def fit_detector(
    model: Any,
    config: RunConfig,
    train: Any,
    train_labels: np.ndarray,
    val: Any,
    *,
    scaling: str,
    method: str,
    accept: float,
    autoencoder_steps: int = ae.STEPS,
) -> Detector:
    """Fit `method` on the training split and calibrate it on validation.

    Args:
        model: the plain trained classifier.
        config: the run's configuration (model, TTA, seed, channels).
        train: ordered, unaugmented dataset of the training split (batches of images, labels).
        train_labels: its class indices, in dataset order.
        val: ordered dataset of the validation split.
        scaling: the model's pixel range.
        method: one of :data:`tfpipeline.config.OOD_METHODS`.
        accept: share of validation images the threshold accepts.
        autoencoder_steps: optimisation steps of the `autoencoder` method.

    Returns:
        The fitted, calibrated detector (not yet saved).

    Raises:
        UserError: an unknown method, or no training or validation images.
    """
    from tfpipeline.models.tta import with_tta
    from tfpipeline.ood.views import head_linear, view_model

    if method not in OOD_METHODS:
        raise UserError(f"--method must be one of {', '.join(OOD_METHODS)}; got '{method}'")
    tta = config.train.tta
    start = time.perf_counter()
    facts: dict[str, Any] = {"counts": {"train": int(len(train_labels))}}
    arrays: dict[str, np.ndarray] = {}
    layout, network = None, None
    if method == "autoencoder":
        network, facts["autoencoder"] = ae.train_autoencoder(
            train, scaling, config.data.channels, steps=autoencoder_steps, seed=config.data.seed
        )
    else:
        view, layout = view_model(model, config.model)
        facts["embedding_layer"] = layout.embedding_layer
        facts["taps"] = list(layout.taps)
        if method == "mahalanobis":
            _, embeddings, _ = layout.split(with_tta(view, tta).predict(train, verbose=0))
            arrays, facts["mahalanobis"] = fit_mahalanobis(embeddings, train_labels)
        elif method == "energy":
            arrays["kernel"], arrays["bias"] = head_linear(model, layout)
    fit_seconds = time.perf_counter() - start

    draft = Detector(method, float("nan"), accept, tta, scaling, layout, arrays, facts, network)
    start = time.perf_counter()
    _, scores = OODScorer(model, config.model, draft).predict(val)
    threshold = calibrate(scores, accept)
    facts["counts"]["val"] = int(len(scores))
    facts["val_acceptance"] = float(np.mean(scores <= threshold))
    facts["seconds"] = {"fit": round(fit_seconds, 3), "calibrate": round(time.perf_counter() - start, 3)}
    return dataclasses.replace(draft, threshold=threshold, facts=facts)


def fit_subset(split: Any, seed: int, limit: int = MAX_FIT_IMAGES) -> Any:
    """At most `limit` examples of `split`, drawn at random with `seed` (in their order)."""
    if len(split.labels) <= limit:
        return split
    keep = np.zeros(len(split.labels), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(split.labels), size=limit, replace=False)] = True
    return split.subset(keep)


def ordered_train(bundle: Any, config: RunConfig, scaling: str, split: Any = None) -> Any:
    """The training split (or `split`) as an ordered, unaugmented dataset."""
    from tfpipeline.data import build_dataset

    return build_dataset(
        bundle.splits["train"] if split is None else split,
        config.data,
        scaling=scaling,
        training=False,
        num_classes=bundle.info.num_classes,
        label_mode="int",
        cache_name="train",
    )


def fit_run_detector(
    run_path: str | Path,
    model: Any,
    config: RunConfig,
    scaling: str,
    *,
    method: str | None = None,
    accept: float | None = None,
    bundle: Any = None,
    autoencoder_steps: int = ae.STEPS,
) -> Detector | None:
    """Fit, calibrate and save a run's detector to `RUN/ood/` (replacing an earlier one).

    Args:
        run_path: the run folder.
        model: its plain classifier (best checkpoint).
        config: its configuration.
        scaling: its pixel range.
        method: default the run's `--ood` (`none`: nothing is fitted, None returned).
        accept: default the run's `--ood-accept`.
        bundle: the run's loaded data (loaded from `config.data` when not given).
        autoencoder_steps: optimisation steps of the `autoencoder` method.

    Returns:
        The saved detector, or None for `none`.
    """
    method = method or config.train.ood
    accept = config.train.ood_accept if accept is None else accept
    if method == "none":
        return None
    if bundle is None:
        from tfpipeline.data import load_data

        bundle = load_data(config.data, scaling=scaling)
    train = fit_subset(bundle.splits["train"], config.data.seed)
    detector = fit_detector(
        model,
        config,
        ordered_train(bundle, config, scaling, train),
        train.labels,
        bundle.val,
        scaling=scaling,
        method=method,
        accept=accept,
        autoencoder_steps=autoencoder_steps,
    )
    save_detector(run_path, detector)
    log.info(
        "out-of-domain detector: %s, threshold %.4g accepts %.1f%% of %d validation images (fit %.1f s)",
        method,
        detector.threshold,
        100 * detector.facts["val_acceptance"],
        detector.facts["counts"]["val"],
        detector.facts["seconds"]["fit"],
    )
    return detector
