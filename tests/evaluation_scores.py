"""Deterministic labels and class probabilities for the evaluation tests (no files, no model)."""

from __future__ import annotations

import numpy as np

BINARY_NAMES = ["cat", "dog"]
MULTI_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]


def binary_scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, (n, 2) probabilities): 30% positives, informative but imperfect scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(2.0 * (y - 0.5) * 2 + rng.normal(0, 1.5, n))))
    return y, np.stack([1 - p, p], axis=1)


def multiclass_scores(n: int = 400, k: int = 6, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels, (n, k) softmax probabilities) with the true class's logit raised by 1.5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs
