"""The detectors' maths: fitting on training views, scoring in TensorFlow, calibrating.

Every score is *higher for less familiar inputs*; an image is accepted as in-domain when its
score is at most the detector's threshold.

- `mahalanobis` (Lee et al. 2018): class-conditional Gaussians on the embeddings with one
  shared covariance, estimated with Ledoit-Wolf shrinkage (scikit-learn), so a fit on fewer
  embeddings than dimensions (or on dead ReLU units) still gives a well-conditioned precision
  matrix. Score: the smallest squared Mahalanobis distance to a class mean, divided by the
  embedding width (about 1 for typical training images).
- `energy` (Liu et al. 2020): `-logsumexp(logits)`. A binary model's single logit z is read as
  the symmetric pair (-z/2, z/2), so confidence in either class lowers the energy.
- `msp` (Hendrycks & Gimpel 2017): one minus the largest class probability.
- `autoencoder`: see :mod:`tfpipeline.ood.autoencoder`.

Scores are computed by :func:`score_views` with TensorFlow ops only, so training-time
calibration, `predict`, `evaluate` and the exported graph run the very same computation; the
fitted arrays become constants of the graph.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tfpipeline.errors import UserError
from tfpipeline.ood.views import ViewLayout

log = logging.getLogger(__name__)

EIGEN_FLOOR = 1e-6  # smallest covariance eigenvalue kept, relative to the largest


def fit_mahalanobis(
    embeddings: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Class means and a whitening matrix of the shared, shrunk covariance.

    Args:
        embeddings: [N, D] training embeddings.
        labels: [N] class indices.

    Returns:
        (arrays, facts): `means` [C, D] and `whitener` W [D, D] with W W^T the precision
        matrix (scores: squared distances of x W to means W, stored as `whitened_means`), plus
        the shrinkage intensity and counts.

    Raises:
        UserError: no embeddings at all.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(x) == 0:
        raise UserError("out-of-domain fit: no training embeddings")
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    if len(x) > 1:
        estimator = LedoitWolf(assume_centered=True).fit(centred)
        covariance, shrinkage = estimator.covariance_, float(estimator.shrinkage_)
    else:
        covariance, shrinkage = np.zeros((x.shape[1], x.shape[1])), 1.0
    eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
    floor = max(float(eigenvalues.max()) * EIGEN_FLOOR, 1e-12)
    floored = int(np.sum(eigenvalues < floor))
    whitener = eigenvectors / np.sqrt(np.maximum(eigenvalues, floor))
    if len(x) <= x.shape[1]:
        log.info(
            "out-of-domain fit on %d embeddings of %d dimensions: Ledoit-Wolf shrinkage %.3f",
            len(x),
            x.shape[1],
            shrinkage,
        )
    arrays = {
        "means": means.astype(np.float32),
        "whitener": whitener.astype(np.float32),
        "whitened_means": (means @ whitener).astype(np.float32),
    }
    facts = {"shrinkage": shrinkage, "classes": int(len(classes)), "dims": int(x.shape[1])}
    facts["floored_eigenvalues"] = floored
    return arrays, facts


def mahalanobis_reference(embeddings: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The Mahalanobis score written out in numpy (float64): min_k (x-mu_k)^T P (x-mu_k) / D."""
    x = np.asarray(embeddings, np.float64)
    diffs = x[:, None, :] - np.asarray(means, np.float64)[None]
    distances = np.einsum("nkd,de,nke->nk", diffs, np.asarray(precision, np.float64), diffs)
    return distances.min(axis=1) / x.shape[1]


def score_views(method: str, views: Any, layout: ViewLayout, arrays: dict[str, np.ndarray]) -> Any:
    """OOD scores [N] (float32 tensor) of view-model outputs [N, ...], TensorFlow ops only.

    Args:
        method: `mahalanobis`, `energy` or `msp`.
        views: the view model's output (see :mod:`tfpipeline.ood.views`).
        layout: its column layout.
        arrays: the fitted arrays (`means`/`whitener`/`whitened_means`; `kernel`/`bias`).
    """
    import tensorflow as tf

    views = tf.cast(views, tf.float32)
    output, embedding, head = layout.split(views)
    if method == "mahalanobis":
        projected = tf.matmul(embedding, tf.constant(arrays["whitener"]))
        diffs = projected[:, None, :] - tf.constant(arrays["whitened_means"])[None]
        distances = tf.reduce_sum(tf.square(diffs), axis=-1)
        return tf.reduce_min(distances, axis=1) / float(layout.embedding)
    if method == "energy":
        logits = tf.matmul(head, tf.constant(arrays["kernel"])) + tf.constant(arrays["bias"])
        if layout.units == 1:
            logits = tf.concat([-logits / 2.0, logits / 2.0], axis=1)
        return -tf.reduce_logsumexp(logits, axis=1)
    if method == "msp":
        if layout.units == 1:
            output = tf.concat([1.0 - output, output], axis=1)
        return 1.0 - tf.reduce_max(output, axis=1)
    raise ValueError(f"score_views: unknown method '{method}'")


def calibrate(scores: np.ndarray, accept: float) -> float:
    """The threshold accepting (score <= threshold) at least `accept` of `scores`, and at most one
    image more than that share: the smallest observed score at or above the `accept` quantile.

    Raises:
        UserError: no scores, or `accept` outside (0, 1).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not 0.0 < accept < 1.0:
        raise UserError(f"--ood-accept is a share in (0, 1), got {accept}")
    if len(scores) == 0:
        raise UserError("out-of-domain calibration: no validation images")
    return float(np.quantile(scores, accept, method="higher"))


def separation(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """How well `threshold` separates in-domain from out-of-domain scores.

    Returns:
        `auroc` (out-of-domain as the positive class; None without both kinds), the
        `false_acceptance` rate (share of out-of-domain images accepted), the
        `in_domain_acceptance` rate, and both counts.
    """
    from sklearn.metrics import roc_auc_score

    in_scores = np.asarray(in_scores, np.float64).reshape(-1)
    out_scores = np.asarray(out_scores, np.float64).reshape(-1)
    both = len(in_scores) and len(out_scores)
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    scores = np.concatenate([in_scores, out_scores])
    return {
        "auroc": float(roc_auc_score(labels, scores)) if both else None,
        "false_acceptance": float(np.mean(out_scores <= threshold)) if len(out_scores) else None,
        "in_domain_acceptance": float(np.mean(in_scores <= threshold)) if len(in_scores) else None,
        "num_in_domain": int(len(in_scores)),
        "num_out_of_domain": int(len(out_scores)),
        "threshold": float(threshold),
    }
