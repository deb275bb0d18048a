"""A short markdown write-up of one run, generated from its facts.

`facts` is a flat-ish dict the training/evaluation code fills in (JSON-serialisable):

Required keys
    data_source     str         where the images came from (folder, `tfds:NAME`, `faces`, ...)
    class_names     list[str]   class order used by the model
    split_counts    dict        per split (`train`, `val`, optional `test`): either a total int
                                or a dict {class name: count}
    model_name      str         registry name, e.g. `small_cnn`, `resnet50_head`
    model_params    int         total parameter count
    epochs_run      int         epochs actually trained
    optimizer       str         e.g. `sgd`
    lr              float       initial learning rate
    val_metrics     dict        scalar metrics on validation, e.g. from `classification_metrics`

Optional keys
    run_name            str     run folder name (heading)
    image_size          [h, w]
    trainable_params    int
    pretrained          bool    the backbone starts from pretrained weights
    pretrained_models   list    registered models that can start from pretrained weights
    epochs_planned      int     the `--epochs` budget
    schedule            str     `none`, `cosine`, `plateau`
    early_stopping      int     patience in epochs, 0 = off
    stopped_early       bool
    best_epoch          int     1-based epoch whose weights were kept
    train_seconds       float   wall-clock training time
    class_weight        str     `none` or `balanced`
    augmentation        bool    any training augmentation on
    train_metrics       dict    last-epoch training metrics (same names), for the train-val gap
    test_metrics        dict    scalar metrics on the test split (or another evaluated split)
    test_label          str     column header of `test_metrics` (default `test`)
    group_gap           dict    the largest per-group gap (`by`, `metric`, `gap`, `highest`,
                                `lowest`), from `evaluate --groups`
    evaluation_data     dict    what was evaluated: `location`, `split`, `counts` {class: n},
                                `external` (data the model was not trained or validated on)
    threshold_policy    str     `0.5`, `prior`, `tuned`, ... (binary tasks)
    threshold           float   the threshold value used

Only scalar entries of the metric dicts are reported (confusion matrices and per-class tables
are skipped), rounded to 3 decimals. The text stays under :data:`MAX_WORDS` words.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

MAX_WORDS = 500
REQUIRED = (
    "data_source",
    "class_names",
    "split_counts",
    "model_name",
    "model_params",
    "epochs_run",
    "optimizer",
    "lr",
    "val_metrics",
)
METRIC_ORDER = (
    "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "top3_accuracy", "top5_accuracy",
    "loss", "log_loss", "ece",
)  # fmt: skip
NOT_METRICS = {"num_samples", "threshold"}
MAX_METRIC_ROWS = 12
MAX_LISTED_CLASSES = 12

GAP_TOLERANCE = 0.10  # train minus val accuracy above this suggests overfitting
SMALL_TRAIN_SET = 2000  # images
IMBALANCE_RATIO = 1.5  # largest over smallest training class
ECE_TOLERANCE = 0.05
UNDERFIT_ACCURACY = 0.80
GROUP_GAP_TOLERANCE = 0.05


def write_summary(facts: Mapping[str, Any]) -> str:
    """Markdown summary (<= 500 words): data, model, training, results, what to try next."""
    missing = [key for key in REQUIRED if key not in facts]
    if missing:
        raise ValueError(f"write_summary: facts lack required key(s) {', '.join(missing)}")
    title = f"# Run summary: {facts['run_name']}" if facts.get("run_name") else "# Run summary"
    sections = [title, _data(facts), _model(facts), _training(facts), _results(facts), _next(facts)]
    text = "\n\n".join(s for s in sections if s) + "\n"
    if len(text.split()) > MAX_WORDS:  # only a huge class list or many metrics can get here
        words = text.split()
        text = " ".join(words[: MAX_WORDS - 1]) + " …\n"
    return text


def _data(facts: Mapping[str, Any]) -> str:
    names = [str(n) for n in facts["class_names"]]
    shown = ", ".join(names[:MAX_LISTED_CLASSES])
    if len(names) > MAX_LISTED_CLASSES:
        shown += f", … ({len(names) - MAX_LISTED_CLASSES} more)"
    lines = ["## Data", f"- Source: `{facts['data_source']}`; {len(names)} classes: {shown}."]
    for split, counts in facts["split_counts"].items():
        if isinstance(counts, Mapping):
            total = sum(int(v) for v in counts.values())
            detail = ""
            if len(counts) <= 5:
                detail = " (" + ", ".join(f"{k} {int(v)}" for k, v in counts.items()) + ")"
            elif counts:
                detail = f" (per class {min(counts.values())}–{max(counts.values())})"
            lines.append(f"- {split}: {total} images{detail}.")
        else:
            lines.append(f"- {split}: {int(counts)} images.")
    evaluated = facts.get("evaluation_data")
    if evaluated and evaluated.get("external"):
        counts = evaluated.get("counts") or {}
        detail = ", ".join(f"{k} {int(v)}" for k, v in list(counts.items())[:5])
        lines.append(
            f"- Evaluated on external data `{evaluated['location']}` ({evaluated['split']}: "
            f"{sum(int(v) for v in counts.values())} images{'; ' + detail if detail else ''}), which the "
            "model never saw in training or validation; the counts above are its training data."
        )
    return "\n".join(lines)


def _model(facts: Mapping[str, Any]) -> str:
    line = f"- `{facts['model_name']}`, {int(facts['model_params']):,} parameters"
    if facts.get("trainable_params") is not None:
        line += f" ({int(facts['trainable_params']):,} trainable)"
    if facts.get("pretrained") is not None:
        line += ", pretrained backbone" if facts["pretrained"] else ", trained from scratch"
    if facts.get("image_size"):
        h, w = facts["image_size"]
        line += f", input {h}×{w}"
    return "## Model\n" + line + "."


def _training(facts: Mapping[str, Any]) -> str:
    epochs = f"{facts['epochs_run']}"
    if facts.get("epochs_planned"):
        epochs += f" of {facts['epochs_planned']}"
    parts = [f"{epochs} epochs", f"{facts['optimizer']} at lr {facts['lr']:g}"]
    if facts.get("schedule") and facts["schedule"] != "none":
        parts.append(f"{facts['schedule']} schedule")
    patience = facts.get("early_stopping") or 0
    if patience:
        stopped = " (triggered)" if facts.get("stopped_early") else ""
        parts.append(f"early stopping, patience {patience}{stopped}")
    if facts.get("best_epoch"):
        parts.append(f"best epoch {facts['best_epoch']}")
    if facts.get("class_weight") and facts["class_weight"] != "none":
        parts.append(f"{facts['class_weight']} class weights")
    if facts.get("augmentation") is not None:
        parts.append("augmentation on" if facts["augmentation"] else "no augmentation")
    if facts.get("train_seconds") is not None:
        parts.append(f"{float(facts['train_seconds']):.0f} s")
    return "## Training\n- " + "; ".join(parts) + "."


def _results(facts: Mapping[str, Any]) -> str:
    val = _scalars(facts["val_metrics"])
    test = _scalars(facts.get("test_metrics") or {})
    names = [m for m in METRIC_ORDER if m in val or m in test]
    names += sorted((set(val) | set(test)) - set(names))
    names = names[:MAX_METRIC_ROWS]
    lines = ["## Results"]
    if facts.get("threshold") is not None:
        policy = facts.get("threshold_policy", "given")
        lines.append(f"Decision threshold {_fmt(facts['threshold'])} (policy: {policy}).\n")
    label = facts.get("test_label", "test")
    header = "| metric | val |" + (f" {label} |" if test else "")
    lines += [header, "|---|---|" + ("---|" if test else "")]
    for name in names:
        row = f"| {name} | {_fmt(val.get(name))} |"
        lines.append(row + (f" {_fmt(test.get(name))} |" if test else ""))
    return "\n".join(lines)


def _next(facts: Mapping[str, Any]) -> str:
    ideas = []
    val = _scalars(facts["val_metrics"])
    train = _scalars(facts.get("train_metrics") or {})
    test = _scalars(facts.get("test_metrics") or {})
    if "accuracy" in train and "accuracy" in val:
        gap = train["accuracy"] - val["accuracy"]
        if gap > GAP_TOLERANCE:
            extra = "" if facts.get("augmentation") else " and turn on augmentation"
            ideas.append(
                f"Train accuracy beats val by {gap:.3f}: overfitting; add dropout/L2{extra}, or stop earlier."
            )
        elif train["accuracy"] < UNDERFIT_ACCURACY:
            ideas.append(
                f"Train accuracy is only {train['accuracy']:.3f}: underfitting; train longer, raise the "
                "learning rate or use a bigger model."
            )
    n_train = _total(facts["split_counts"].get("train"))
    candidates = facts.get("pretrained_models") or []
    if n_train is not None and n_train < SMALL_TRAIN_SET and not facts.get("pretrained") and candidates:
        names = ", ".join(f"`{name}`" for name in candidates)
        ideas.append(f"Only {n_train} training images: start from a pretrained model ({names}).")
    train_counts = facts["split_counts"].get("train")
    if isinstance(train_counts, Mapping) and len(train_counts) > 1:
        low, high = min(train_counts.values()), max(train_counts.values())
        if low == 0 or high / low > IMBALANCE_RATIO:
            tips = []
            if facts.get("class_weight", "none") == "none":
                tips.append("`--class-weight balanced`")
            if len(facts["class_names"]) == 2 and facts.get("threshold_policy") in (None, "0.5"):
                tips.append("`--threshold tuned`")
            tips.append("judge by PR AUC and recall")
            counts = f"{low} vs {high} training images"
            ideas.append(f"Classes are imbalanced ({counts}): " + ", ".join(tips) + ".")
    gap = facts.get("group_gap")
    if gap and gap["gap"] > GROUP_GAP_TOLERANCE:
        ideas.append(
            f"By {gap['by']}, {gap['metric']} differs by {gap['gap']:.3f} between {gap['highest']} and "
            f"{gap['lowest']}: check that group's data and errors before trusting the model for it."
        )
    ece = test.get("ece", val.get("ece"))
    if ece is not None and ece > ECE_TOLERANCE:
        ideas.append(f"ECE is {ece:.3f}: probabilities are miscalibrated; fit temperature scaling on val.")
    best = facts.get("best_epoch")
    if best is not None and best >= facts["epochs_run"] - 1 and not facts.get("stopped_early"):
        ideas.append(f"Val was still improving at epoch {best} of {facts['epochs_run']}: allow more epochs.")
    if not ideas:
        ideas.append("No obvious problem: tune hyperparameters or collect more data.")
    return "## What to try next\n" + "\n".join(f"- {idea}" for idea in ideas)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The real-valued metrics (numpy scalars included), minus bookkeeping entries."""
    return {
        str(key): float(value)
        for key, value in metrics.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and key not in NOT_METRICS
    }


def _total(counts: Any) -> int | None:
    if counts is None:
        return None
    if isinstance(counts, Mapping):
        return int(sum(int(v) for v in counts.values()))
    return int(counts)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):.3f}"
