"""`tfpipeline evaluate`: re-evaluate a finished run's best checkpoint on one split.

The run folder supplies everything: the checkpoint, the config (so the data is rebuilt exactly
as training built it), the pixel scaling from run.json and the decision rule from
metrics.json (so the numbers agree with what training reported). Output goes to
`RUN/evaluation/<split>/`: classification_report.txt, metrics.json, confusion_matrix.png,
roc.png, precision_recall.png, reliability.png, top_losses.png, gradcam.png and summary.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

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

    Raises:
        UserError: not a run folder, the split does not exist, the data's classes differ.
    """
    from tfpipeline.data import load_split
    from tfpipeline.evaluation.breakdown import breakdown_table, fake_breakdown, region_head_report
    from tfpipeline.evaluation.figures import Selection, gradcam_figure, top_losses_figure
    from tfpipeline.evaluation.metrics import classification_metrics, classification_report_text
    from tfpipeline.evaluation.plots import (
        plot_confusion_matrix,
        plot_precision_recall,
        plot_reliability_diagram,
        plot_roc,
        save_figure,
    )
    from tfpipeline.evaluation.run_report import class_probabilities
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
    if chosen.split.from_files:
        fake_class = context.config.data.augment.fake_class
        breakdown = fake_breakdown(chosen.split.paths, y_true, probs, rule, names, fake_class)
        if breakdown:
            metrics["breakdown"] = breakdown
            report += "\n" + breakdown_table(breakdown)
        if context.config.model.aux_regions:
            head = region_head_report(
                chosen.split.paths, y_true, _region_probs(context, chosen.dataset), names, fake_class
            )
            if head:
                metrics["region_head"] = head
                report += (
                    "\nauxiliary region head, AUC per region: "
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
    files["metrics"].write_text(json.dumps(metrics, indent=2))
    figures = {
        "confusion_matrix": lambda: plot_confusion_matrix(y_true, y_pred, names),
        "roc": lambda: plot_roc(y_true, probs, names, rule.metric_index),
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

    if adversarial:
        metrics["adversarial"] = _adversarial(
            with_tta(model, tta), chosen.dataset, y_true, probs, adversarial, context, out_dir, files
        )
        files["metrics"].write_text(json.dumps(metrics, indent=2))

    summary = write_summary(summary_facts(context, chosen.info, split, metrics, external))
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
    """The auxiliary region head's outputs [N, 4] over `dataset` (runs trained with --aux-regions)."""
    import keras

    full = keras.models.load_model(context.run.model_checkpoint(), compile=False)
    return np.concatenate([np.asarray(full.network(x, training=False)[1]) for x, _ in dataset])


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


# ---------------------------------------------------------------------------------------------
# summary facts


def summary_facts(
    context: RunContext, data_info, split: str, metrics: dict[str, Any], external: bool = False
) -> dict[str, Any]:
    """The facts `write_summary` needs, from run.json, the config, history.csv and the metrics.

    The data section describes what the model was trained on (run.json's counts); the evaluated
    split, and whether it is external data the model never saw, is a fact of its own.
    """
    import pandas as pd

    from tfpipeline.models import MODELS, get_spec

    config, info = context.config, context.info
    spec = get_spec(config.model.name)
    history = pd.read_csv(context.run.history_file) if context.run.history_file.is_file() else pd.DataFrame()
    train_metrics = {}
    if len(history):
        last = history.iloc[-1]
        skip = {"epoch", "epoch_seconds", "learning_rate"}
        train_metrics = {
            k: float(last[k]) for k in history.columns if not k.startswith("val_") and k not in skip
        }
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list, str))}
    val_metrics = scalars if split == "val" and not external else (context.metrics.get("val") or {})
    facts: dict[str, Any] = {
        "run_name": f"{context.run.path.name} (evaluated on {split})",
        "data_source": (info.get("data") or {}).get("location", config.data.data),
        "class_names": list(context.class_names),
        "split_counts": (info.get("data") or {}).get("counts") or data_info.counts,
        "evaluation_data": {
            "location": data_info.location,
            "split": split,
            "counts": data_info.counts.get(split, {}),
            "external": external,
        },
        "model_name": config.model.name,
        "model_params": int(info.get("total_params") or 0),
        "trainable_params": info.get("trainable_params"),
        "pretrained": spec.pretrained(config.model),
        "pretrained_models": [name for name, other in MODELS.items() if other.can_be_pretrained],
        "image_size": list(config.data.image_size),
        "epochs_run": int(info.get("epochs_run") or len(history)),
        "epochs_planned": config.train.epochs,
        "optimizer": config.train.optimizer,
        "lr": config.train.lr,
        "schedule": config.train.schedule,
        "early_stopping": config.train.early_stopping,
        "stopped_early": bool(info.get("stopped_early", False)),
        "best_epoch": context.metrics.get("best_epoch"),
        "train_seconds": info.get("train_seconds"),
        "class_weight": config.train.class_weight,
        "augmentation": config.data.augment.enabled,
        "train_metrics": train_metrics,
        "val_metrics": val_metrics,
        "test_metrics": scalars if split != "val" or external else None,
        "test_label": "test"
        if split == "test" and not external
        else ("external " if external else "") + split,
    }
    if context.rule.binary:
        facts["threshold_policy"] = context.rule.policy
        facts["threshold"] = context.rule.value
    return {k: v for k, v in facts.items() if v is not None}
