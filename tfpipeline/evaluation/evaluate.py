"""`tfpipeline evaluate`: re-evaluate a finished run's best checkpoint on one split.

The run folder supplies everything: the checkpoint, the config (so the data is rebuilt exactly
as training built it), the pixel scaling from run.json and the decision rule from
metrics.json (so the numbers agree with what training reported). Output goes to
`RUN/evaluation/<split>/`: classification_report.txt, metrics.json, predictions.csv (one row per
image: file, true and predicted class, class probabilities), confusion_matrix.png,
roc.png, precision_recall.png, reliability.png, top_losses.png, gradcam.png and summary.md
(and, with `--ood-data`, ood_histogram.png and ood_scores.csv: :mod:`.ood_report`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import RunContext, load_run_model, open_run

log = logging.getLogger(__name__)

ECE_BINS = 15


# ---------------------------------------------------------------------------------------------
# evaluate


@dataclass
class EvaluationResult:
    """What `evaluate_run` produced: where, on which split, the metrics and the files."""

    split: str
    out_dir: Path
    metrics: dict[str, Any]
    report: str
    files: dict[str, Path] = field(default_factory=dict)


def evaluate_run(
    run_path: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    gradcam: int = 8,
    top_losses: int = 9,
    tta: str | None = None,
    adversarial: tuple[float, ...] = (),
    groups: str | Path | None = None,
    ood_data: str | Path | None = None,
) -> EvaluationResult:
    """Evaluate a run's checkpoint on `split` and write every artefact.

    Args:
        run_path: the run folder.
        data: evaluate on this `--data` instead of the run's (the same classes required), e.g. an
            out-of-domain folder; its every image by default (`split="all"`).
        split: `test`, `val`, `train` or `all` (every image of the data, unsplit); default test
            when the run's data has one, else val; `all` for other data.
        out: output folder; default `RUN/evaluation/<split>` (`RUN/evaluation/<folder>-<split>`
            for other data).
        gradcam: number of images in the Grad-CAM grid (0: none).
        top_losses: number of images in the top-losses grid (0: none).
        tta: test-time augmentation of the predictions (default: the run's own).
        adversarial: FGSM steps ε (shares of the pixel range, e.g. 2/255) to report robustness
            at: adversarial.csv, robustness.png and adversarial_examples.png.
        groups: a CSV naming a group for files of the split (`path,group[,...]`): per-group
            metrics with confidence intervals and the largest gaps (groups.json, groups.png).
        ood_data: out-of-domain images (a folder of any layout, or a dataset name): the run's
            detector's AUROC and false acceptance against the evaluated split (metrics `ood`).

    Raises:
        UserError: not a run folder, the split does not exist, the data's classes differ, or
            `ood_data` is given for a run without an out-of-domain detector.
    """
    from tfpipeline.data import load_split
    from tfpipeline.evaluation.breakdown import breakdown_table, fake_breakdown, region_head_report
    from tfpipeline.evaluation.facts import summary_facts
    from tfpipeline.evaluation.figures import Selection, gradcam_figure, top_losses_figure
    from tfpipeline.evaluation.groups import group_report, plot_groups, read_groups
    from tfpipeline.evaluation.metrics import classification_metrics, classification_report_text
    from tfpipeline.evaluation.operating import operating_points, operating_table
    from tfpipeline.evaluation.plots import (
        plot_confusion_matrix,
        plot_precision_recall,
        plot_reliability_diagram,
        plot_roc,
        save_figure,
    )
    from tfpipeline.evaluation.run_report import SplitPredictions, class_probabilities, prediction_table
    from tfpipeline.evaluation.summary import write_summary
    from tfpipeline.models.tta import with_tta

    context = open_run(run_path)
    own = context.config.data
    external = data is not None and data != own.data
    # No cache: an on-disk cache prefix from training would serve stale pixels for other --data.
    data_config = replace(own, cache="none", **({"data": data, "classes": ()} if external else {}))
    if split is None:
        split = (
            "all"
            if external
            else ("test" if "test" in (context.info.get("data") or {}).get("counts", {}) else "val")
        )
    chosen = load_split(data_config, split, scaling=context.scaling, class_names=context.class_names)
    folder = split if not external else f"{_safe_name(chosen.info.location)}-{split}"
    out_dir = Path(out) if out else context.run.path / "evaluation" / folder
    out_dir.mkdir(parents=True, exist_ok=True)

    model = load_run_model(context)
    tta = tta or context.config.train.tta
    y_true = np.asarray(chosen.split.labels)
    probs = class_probabilities(
        with_tta(model, tta).predict(chosen.dataset, verbose=0), context.num_classes, context.positive_index
    )
    rule = context.rule
    names = list(context.class_names)
    y_pred = rule.predict(probs)

    metrics = {
        "run": str(context.run.path),
        "split": split,
        "data": chosen.info.location,
        "external_data": external,
        "tta": tta,
        "checkpoint": str(context.run.model_checkpoint().relative_to(context.run.path)),
        **classification_metrics(y_true, probs, names, rule=rule),
    }
    metrics["calibration"] = {"ece": metrics["ece"], "bins": ECE_BINS, "table": _calibration(y_true, probs)}
    report = classification_report_text(y_true, probs, names, rule=rule)
    points = operating_points(y_true, probs, rule)
    if points:
        metrics["operating_points"] = points
        report += "\n" + operating_table(points, str(rule.positive_class))
    if chosen.split.from_files:
        fake_class = context.config.data.augment.fake_class
        breakdown = fake_breakdown(chosen.split.paths, y_true, probs, rule, names, fake_class)
        if breakdown:
            metrics["breakdown"] = breakdown
            report += "\n" + breakdown_table(breakdown)
        model_config = context.config.model
        if (model_config.aux_regions or model_config.region_crops) and fake_class in names:
            edited = _region_probs(context, chosen.dataset)
            scored = (
                1 if context.positive_index is None else context.positive_index
            )  # what the sigmoid scores
            if model_config.region_crops and names.index(fake_class) != scored:
                edited = 1.0 - edited  # the crops answer for the scored class: here, "real"
            head = region_head_report(chosen.split.paths, y_true, edited, names, fake_class)
            if head:
                metrics["region_head"] = head
                report += (
                    ("\nregion crops" if model_config.region_crops else "\nauxiliary region head")
                    + ", AUC per region: "
                    + ", ".join(
                        f"{region} {row['auc']:.3f} ({row['positives']} edited)"
                        for region, row in head.items()
                    )
                    + "\n"
                )

    files = {
        "classification_report": out_dir / "classification_report.txt",
        "metrics": out_dir / "metrics.json",
    }
    files["classification_report"].write_text(report)
    files["predictions"] = out_dir / "predictions.csv"
    paths = chosen.split.paths if chosen.split.from_files else None
    table = prediction_table(SplitPredictions(y_true, probs), names, rule, paths)
    table.to_csv(files["predictions"], index=False)
    figures = {
        "confusion_matrix": lambda: plot_confusion_matrix(y_true, y_pred, names),
        "roc": lambda: plot_roc(
            y_true,
            probs,
            names,
            rule.metric_index,
            mark=(points[0]["fpr"], points[0]["recall"], f"this run's threshold {rule.value:.3f}")
            if points
            else None,
        ),
        "precision_recall": lambda: plot_precision_recall(y_true, probs, names, rule.metric_index),
        "reliability": lambda: plot_reliability_diagram(y_true, probs, ECE_BINS),
    }
    for name, make in figures.items():
        files[name] = save_figure(make(), out_dir / f"{name}.png")

    selection = Selection(chosen.split, data_config, context, split)
    if top_losses > 0:
        files["top_losses"] = top_losses_figure(selection, y_true, probs, y_pred, top_losses, out_dir)
    if gradcam > 0:
        files["gradcam"] = gradcam_figure(selection, model, y_true, probs, y_pred, gradcam, out_dir)

    if groups is not None:
        if not chosen.split.from_files:
            raise UserError(f"--groups matches files by path; {chosen.info.location} is not an image folder")
        metrics["groups"] = group_report(read_groups(groups, chosen.split.paths), y_true, probs, rule)
        files["groups"] = out_dir / "groups.json"
        files["groups"].write_text(json.dumps(metrics["groups"], indent=2))
        files["groups_plot"] = save_figure(plot_groups(metrics["groups"]), out_dir / "groups.png")
    if ood_data is not None:
        from tfpipeline.evaluation.ood_report import ood_report, ood_text

        metrics["ood"], ood_files = ood_report(context, model, chosen, ood_data, out_dir)
        files.update(ood_files)
        report += ood_text(metrics["ood"])
        files["classification_report"].write_text(report)
    if adversarial:
        metrics["adversarial"] = _adversarial(
            with_tta(model, tta), chosen.dataset, y_true, probs, adversarial, context, out_dir, files
        )
    files["metrics"].write_text(json.dumps(metrics, indent=2))

    summary = write_summary(summary_facts(context, chosen.info, split, metrics, external))
    if metrics.get("ood"):
        from tfpipeline.evaluation.ood_report import ood_summary

        summary += ood_summary(metrics["ood"])
    files["summary"] = out_dir / "summary.md"
    files["summary"].write_text(summary)
    return EvaluationResult(split=split, out_dir=out_dir, metrics=metrics, report=report, files=files)


def _adversarial(model, dataset, y_true, probs, epsilons, context, out_dir: Path, files: dict) -> list[dict]:
    """FGSM robustness table, curve and example grid (see :mod:`tfpipeline.evaluation.adversarial`)."""
    import pandas as pd

    from tfpipeline.evaluation.adversarial import fgsm, plot_adversarial_examples, plot_robustness, robustness
    from tfpipeline.evaluation.figures import balanced_sample
    from tfpipeline.evaluation.plots import save_figure

    images = np.concatenate([batch for batch, _ in dataset.as_numpy_iterator()])
    steps = tuple(sorted({0.0, *epsilons}))
    rows, probs_by_eps = robustness(
        model, images, y_true, steps, context.scaling, context.rule, list(context.class_names)
    )
    files["adversarial"] = out_dir / "adversarial.csv"
    pd.DataFrame(rows).to_csv(files["adversarial"], index=False)
    files["robustness"] = save_figure(plot_robustness(rows), out_dir / "robustness.png")
    shown = steps[len(steps) // 2] if len(steps) > 2 else steps[-1]
    chosen = balanced_sample(y_true, 4, context.config.data.seed)
    adversarial, _ = fgsm(
        model, images[chosen], y_true[chosen], shown, context.scaling, context.rule.positive_index
    )
    names = context.class_names

    def title(p, i):
        label = int(context.rule.predict(p[i : i + 1])[0])
        return f"{names[label]} p={p[i, label]:.2f}"

    clean_titles = [f"true {names[int(y_true[i])]}: {title(probs, i)}" for i in chosen]
    adv_titles = [title(probs_by_eps[shown], i) for i in chosen]
    figure = plot_adversarial_examples(
        images[chosen], adversarial, clean_titles, adv_titles, shown, context.scaling
    )
    files["adversarial_examples"] = save_figure(figure, out_dir / "adversarial_examples.png")
    return rows


def _region_probs(context: RunContext, dataset) -> np.ndarray:
    """The region outputs [N, 4] over `dataset` (the auxiliary head of --aux-regions, the region
    crops' probabilities of --region-crops)."""
    import keras

    from tfpipeline.models.precision import as_float32

    full = keras.models.load_model(context.run.model_checkpoint(), compile=False)
    network = as_float32(full.network)  # as the classifier's probabilities (load_run_model)
    return np.concatenate([np.asarray(network(x, training=False)[1]) for x, _ in dataset])


def _safe_name(location: str) -> str:
    name = Path(location).name or location
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _calibration(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """The reliability diagram's bins as JSON rows (NaN -> None for empty bins)."""
    from tfpipeline.evaluation.metrics import reliability_table

    table = reliability_table(y_true, probs, ECE_BINS)
    keys = ("lower", "upper", "count", "accuracy", "confidence")
    return [
        {k: (None if np.isnan(table[k][i]) else float(table[k][i])) for k in keys}
        | {"count": int(table["count"][i])}
        for i in range(ECE_BINS)
    ]
