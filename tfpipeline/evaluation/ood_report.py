"""`evaluate --ood-data FOLDER`: how well the run's detector tells FOLDER from its own images.

The detector (:mod:`tfpipeline.ood`) scores the evaluated in-domain split and every image of
FOLDER (any layout: flat, class folders, split folders; or an embedded/tfds name). Written to
the evaluation folder: `ood_histogram.png` (both score distributions and the threshold),
`ood_scores.csv` (set, path, score, in_domain per image) and, in metrics.json and summary.md,
the AUROC (out-of-domain as the positive class), the false-acceptance rate of FOLDER at the
stored threshold and the in-domain acceptance rate.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tfpipeline.errors import UserError


def ood_report(
    context: Any, model: Any, in_domain: Any, ood_data: str | Path, out_dir: Path
) -> tuple[dict, dict]:
    """Score the evaluated split and `ood_data`; write the figure and per-image scores.

    Args:
        context: the run's :class:`~tfpipeline.evaluation.run_context.RunContext`.
        model: its plain classifier.
        in_domain: the evaluated split (an :class:`~tfpipeline.data.EvalSplit`).
        ood_data: the out-of-domain folder or dataset name.
        out_dir: the evaluation folder.

    Returns:
        (metrics["ood"], {file key: path}).

    Raises:
        UserError: the run has no detector, or `ood_data` has no usable image.
    """
    from tfpipeline.evaluation.plots import save_figure
    from tfpipeline.ood.detectors import separation
    from tfpipeline.ood.images import load_images
    from tfpipeline.ood.scorer import run_scorer

    scorer = run_scorer(context.run.path, model, context.config.model)
    if scorer is None:
        raise UserError(
            f"{context.run.path}: no out-of-domain detector to evaluate; fit one with "
            f"`tfpipeline ood fit {context.run.path}`"
        )
    images = load_images(ood_data, context.config.data, context.scaling)
    _, in_scores = scorer.predict(in_domain.dataset)
    _, out_scores = scorer.predict(images.dataset)
    detector = scorer.detector
    metrics = {
        "method": detector.method,
        "ood_data": images.location,
        **separation(in_scores, out_scores, detector.threshold),
        "accept": detector.accept,
        "skipped_files": len(images.skipped),
        "in_domain_mean_score": float(np.mean(in_scores)),
        "ood_mean_score": float(np.mean(out_scores)),
    }
    files = {
        "ood_histogram": save_figure(
            plot_ood_histogram(in_scores, out_scores, detector.threshold, detector.method, images.location),
            out_dir / "ood_histogram.png",
        ),
        "ood_scores": out_dir / "ood_scores.csv",
    }
    in_paths = list(in_domain.split.paths) or [f"#{i}" for i in range(len(in_scores))]
    out_paths = list(images.paths) or [f"#{i}" for i in range(len(out_scores))]
    with open(files["ood_scores"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "path", "ood_score", "in_domain"])
        for name, paths, scores in (("in_domain", in_paths, in_scores), ("ood", out_paths, out_scores)):
            writer.writerows(
                [name, path, f"{score:.6g}", int(score <= detector.threshold)]
                for path, score in zip(paths, scores, strict=True)
            )
    return metrics, files


def plot_ood_histogram(
    in_scores: np.ndarray, out_scores: np.ndarray, threshold: float, method: str, ood_name: str
) -> Figure:
    """Overlaid histograms of in-domain and out-of-domain scores, with the threshold.

    Scores spanning more than two decades (Mahalanobis distances of far-away images) are shown
    on a log axis.
    """
    both = np.concatenate([in_scores, out_scores]).astype(np.float64)
    low, high = float(np.min(both)), float(np.max(both))
    logarithmic = low > 0 and high / low > 100
    if logarithmic:
        bins = np.geomspace(low, high, 41)
    else:
        bins = np.linspace(low, high if high > low else low + 1.0, 41)
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for scores, label in ((in_scores, "in-domain"), (out_scores, Path(ood_name).name)):
        share = np.full(len(scores), 1.0 / max(len(scores), 1))  # bar height: share of its own set
        ax.hist(scores, bins=bins, weights=share, alpha=0.6, label=f"{label} (n={len(scores)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    if logarithmic:
        ax.set_xscale("log")
    ax.set_xlabel(f"{method} OOD score (higher: less familiar)")
    ax.set_ylabel("share of the set's images")
    ax.set_title("Out-of-domain scores")
    ax.legend(fontsize=8)
    return fig


def ood_text(metrics: dict[str, Any]) -> str:
    """The report lines (classification_report.txt and the console)."""
    return (
        f"\nout-of-domain ({metrics['method']}) vs {metrics['ood_data']}: AUROC {metrics['auroc']:.4f}; "
        f"threshold {metrics['threshold']:.4g} accepts {100 * metrics['in_domain_acceptance']:.1f}% of "
        f"{metrics['num_in_domain']} in-domain and {100 * metrics['false_acceptance']:.1f}% of "
        f"{metrics['num_out_of_domain']} out-of-domain images (false acceptance)\n"
    )


def ood_summary(metrics: dict[str, Any]) -> str:
    """A summary.md section."""
    return (
        "\n## Out-of-domain detection\n\n"
        f"The run's `{metrics['method']}` detector (threshold `{metrics['threshold']:.4g}`, calibrated "
        f"to accept {100 * metrics['accept']:.0f}% of validation images) against "
        f"`{metrics['ood_data']}`:\n\n"
        "| AUROC (OOD positive) | in-domain accepted | out-of-domain accepted (false acceptance) |\n"
        "|---|---|---|\n"
        f"| {metrics['auroc']:.4f} | {100 * metrics['in_domain_acceptance']:.1f}% of "
        f"{metrics['num_in_domain']} | {100 * metrics['false_acceptance']:.1f}% of "
        f"{metrics['num_out_of_domain']} |\n\n"
        "Score distributions: `ood_histogram.png`; per-image scores: `ood_scores.csv`.\n"
    )
