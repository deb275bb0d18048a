"""Every detector side by side on one run: `tfpipeline ood compare RUN --ood-data A B ...`.

Each method is fitted and calibrated as training would (nothing is saved), then scores the
run's own held-out split (test, or val without one) and every out-of-domain set. A row per
(method, out-of-domain set) reports the AUROC (out-of-domain as positive), the share of the
run's own held-out images accepted, the share of the out-of-domain images accepted (false
acceptance), and the seconds spent fitting and scoring.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tfpipeline.config import OOD_METHODS, RunConfig
from tfpipeline.ood import autoencoder as ae
from tfpipeline.ood.detectors import separation
from tfpipeline.ood.fit import fit_detector, fit_subset, ordered_train
from tfpipeline.ood.images import ImageSet
from tfpipeline.ood.scorer import OODScorer


def compare_methods(
    model: Any,
    config: RunConfig,
    scaling: str,
    bundle: Any,
    ood_sets: Sequence[ImageSet],
    *,
    methods: Sequence[str] = OOD_METHODS,
    accept: float | None = None,
    autoencoder_steps: int = ae.STEPS,
) -> list[dict[str, Any]]:
    """Fit each of `methods` and measure it against each of `ood_sets`.

    Args:
        model: the run's plain classifier.
        config: the run's configuration.
        scaling: its pixel range.
        bundle: its loaded data (train, val and the held-out split).
        ood_sets: the out-of-domain image sets (:func:`~tfpipeline.ood.images.load_images`).
        methods: detectors to compare.
        accept: the validation acceptance share (default the run's `--ood-accept`).
        autoencoder_steps: optimisation steps of the `autoencoder` method.

    Returns:
        One dict per (method, set): `method`, `in_domain` (split and count), `ood_set`, `auroc`,
        `in_domain_acceptance`, `false_acceptance`, `threshold`, `fit_seconds`, `score_seconds`
        (held-out plus that set), `score_ms_per_image`.
    """
    accept = config.train.ood_accept if accept is None else accept
    held_out = "test" if bundle.test is not None else "val"
    held_out_data = bundle.test if bundle.test is not None else bundle.val
    held_out_count = len(bundle.splits[held_out])
    subset = fit_subset(bundle.splits["train"], config.data.seed)
    train = ordered_train(bundle, config, scaling, subset)
    labels = subset.labels
    rows = []
    for method in methods:
        start = time.perf_counter()
        detector = fit_detector(
            model,
            config,
            train,
            labels,
            bundle.val,
            scaling=scaling,
            method=method,
            accept=accept,
            autoencoder_steps=autoencoder_steps,
        )
        fit_seconds = time.perf_counter() - start
        scorer = OODScorer(model, config.model, detector)
        scorer.predict(held_out_data.take(1))  # trace once, outside the timings
        start = time.perf_counter()
        _, in_scores = scorer.predict(held_out_data)
        in_seconds = time.perf_counter() - start
        for images in ood_sets:
            start = time.perf_counter()
            _, out_scores = scorer.predict(images.dataset)
            seconds = in_seconds + time.perf_counter() - start
            measured = separation(in_scores, out_scores, detector.threshold)
            rows.append(
                {
                    "method": method,
                    "in_domain": f"{config.data.data} {held_out} ({held_out_count})",
                    "ood_set": f"{images.location} ({images.count})",
                    **measured,
                    "fit_seconds": round(fit_seconds, 2),
                    "score_seconds": round(seconds, 2),
                    "score_ms_per_image": round(1000 * seconds / (held_out_count + images.count), 3),
                }
            )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    header = (
        "| method | in-domain (held out) | out-of-domain set | AUROC | own images accepted | "
        "OOD accepted | fit s | score s | ms/image |\n|---|---|---|---|---|---|---|---|---|\n"
    )

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"| {r['method']} | {r['in_domain']} | {r['ood_set']} | "
        f"{'n/a' if r['auroc'] is None else format(r['auroc'], '.4f')} | {pct(r['in_domain_acceptance'])} | "
        f"{pct(r['false_acceptance'])} | {r['fit_seconds']:.2f} | {r['score_seconds']:.2f} | "
        f"{r['score_ms_per_image']:.2f} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"
