"""The facts of one evaluated run that `write_summary` turns into summary.md.

They come from the run folder (run.json, config.yaml, history.csv, metrics.json), the registry
(whether the model is pretrained, which models could be) and the evaluation's own metrics.
"""

from __future__ import annotations

from typing import Any

from tfpipeline.evaluation.run_context import RunContext


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
    gaps = [
        {"by": column, **entry["largest_gap"]}
        for column, entry in (metrics.get("groups") or {}).items()
        if isinstance(entry, dict) and entry.get("largest_gap")
    ]
    if gaps:
        facts["group_gap"] = max(gaps, key=lambda gap: gap["gap"])
    return {k: v for k, v in facts.items() if v is not None}
