"""`metadata.json`: what a served model needs to be used and audited without the run folder.

Written to `assets/metadata.json` in a SavedModel export (TF Serving copies assets with the
model) and to `metadata.json` beside the model file for the keras and tflite formats.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tfpipeline.config_io import to_dict
from tfpipeline.training.run_folder import jsonable

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
_PACKAGES = ("tfpipeline", "tensorflow", "keras")


def data_fingerprint(run_path: Path, data_summary: dict[str, Any]) -> dict[str, str]:
    """sha256 identifying the training data of a run.

    File-based data: over the sorted `(split, path, label)` rows of `splits/*.csv`, so the same
    file lists give the same fingerprint. In-memory data (embedded, TFDS): over the run's data
    summary (source, location, classes, counts), which is all the run records about it.
    """
    files = sorted((run_path / "splits").glob("*.csv"))
    digest = hashlib.sha256()
    if files:
        rows = []
        for file in files:
            with open(file, newline="") as handle:
                reader = csv.DictReader(handle)
                rows += [(file.stem, row["path"], str(row["label"])) for row in reader]
        for split, path, label in sorted(rows):
            digest.update(f"{split}\t{path}\t{label}\n".encode())
        return {"sha256": digest.hexdigest(), "over": "splits/*.csv (split, path, label) rows"}
    digest.update(json.dumps(data_summary, sort_keys=True, default=str).encode())
    return {"sha256": digest.hexdigest(), "over": "run.json data summary (in-memory data)"}


def training_metrics(run_path: Path, best_epoch: int | None) -> dict[str, Any] | None:
    """The training-set metrics of the best epoch (history.csv columns without `val_`)."""
    history_file = run_path / "history.csv"
    if not history_file.is_file():
        return None
    history = pd.read_csv(history_file)
    if history.empty:
        return None
    row = history.iloc[(best_epoch or len(history)) - 1]
    skip = ("epoch", "epoch_seconds", "learning_rate", "lr")
    values = {
        str(k): float(v)
        for k, v in row.items()
        if k not in skip and not str(k).startswith("val_") and pd.notna(v)
    }
    return {"epoch": int(best_epoch or len(history)), **values}


def ood_metadata(detector: Any, fmt: str, included: bool = True) -> dict[str, Any]:
    """metadata.json `ood`: whether the export computes out-of-domain outputs, and how.

    Args:
        detector: the run's :class:`~tfpipeline.ood.store.Detector`, or None (the run has none).
        fmt: the export format; only a SavedModel carries the detector in its graph.
        included: False when the export was asked to leave the detector out (`--no-ood`).
    """
    if detector is None:
        return {
            "in_graph": False,
            "reason": "the run has no out-of-domain detector; fit one with `tfpipeline ood fit RUN` "
            "and export again",
        }
    facts = detector.facts
    described = {
        "method": detector.method,
        "threshold": detector.threshold,
        "accept": detector.accept,
        "tta": detector.tta,
        "embedding_layer": facts.get("embedding_layer"),
        "counts": facts.get("counts"),
        "val_acceptance": facts.get("val_acceptance"),
        "fit_seconds": (facts.get("seconds") or {}).get("fit"),
    }
    if fmt != "saved_model" or not included:
        reason = (
            "exported with --no-ood"
            if included is False and fmt == "saved_model"
            else f"the {fmt} format returns probabilities only; export as saved_model for "
            "ood_score / in_domain outputs"
        )
        return {"in_graph": False, "reason": reason, **described}
    return {
        "in_graph": True,
        **described,
        "outputs": {
            "ood_score": "float32 [N]: how unlike the training images an input is (higher: less "
            f"familiar; {detector.method})",
            "in_domain": "bool [N]: ood_score <= threshold (the threshold accepts "
            f"{100 * detector.accept:.0f}% of in-domain validation images)",
        },
    }


def build_metadata(
    context: Any,
    spec: Any,
    *,
    name: str,
    version: int,
    fmt: str,
    limits: Any,
    ood: Any = None,
    with_ood: bool = True,
) -> dict[str, Any]:
    """The metadata dict of an export.

    Args:
        context: the run's :class:`~tfpipeline.evaluation.run_context.RunContext`.
        spec: the :class:`~tfpipeline.evaluation.run_context.ServingSpec` the export was built with.
        name / version: the export's model name and version.
        fmt: `saved_model`, `keras`, `tflite` or `onnx`.
        limits: the :class:`~tfpipeline.export.limits.ServingLimits` it enforces.
        ood: the run's out-of-domain detector (None: it has none); see :func:`ood_metadata`.
        with_ood: the export includes that detector (False: `--no-ood`).
    """
    import keras
    import tensorflow as tf

    import tfpipeline

    config, info, metrics = context.config, context.info, context.metrics
    data_summary = dict(info.get("data") or {})
    best_epoch = metrics.get("best_epoch")
    positive = spec.rule.positive_class
    return {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "name": name,
        "version": int(version),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "class_names": list(spec.class_names),
        "num_classes": len(spec.class_names),
        "positive_class": positive,
        "positive_index": spec.positive_index,
        "threshold": spec.rule.to_json(),
        "tta": spec.tta,
        "input": {
            "image_size": list(spec.image_size),
            "channels": spec.channels,
            "color_mode": config.data.color_mode,
            "resize": spec.resize,
            "interpolation": spec.interpolation,
            "scaling": spec.scaling,
            "pixels": "0..255",
        },
        "limits": limits.to_json(),
        "ood": ood_metadata(ood, fmt, with_ood),
        "model": {"name": config.model.name, "config": to_dict(config.model)},
        "train_config": to_dict(config.train),
        "metrics": {
            "train": training_metrics(context.run.path, best_epoch),
            "val": metrics.get("val"),
            "test": metrics.get("test"),
            "best_epoch": best_epoch,
            "monitor": metrics.get("monitor"),
        },
        "data": {
            "source": data_summary.get("source"),
            "location": data_summary.get("location", config.data.data),
            "counts": data_summary.get("counts"),
            "train_prior": data_summary.get("train_prior"),
            "fingerprint": data_fingerprint(context.run.path, data_summary),
        },
        "versions": {
            "tfpipeline": tfpipeline.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "trained_with": {k: info[f"{k}_version"] for k in _PACKAGES if f"{k}_version" in info},
        },
        "run": {
            "path": str(context.run.path.resolve()),
            "checkpoint": str(context.run.model_checkpoint().relative_to(context.run.path)),
            "epochs_run": info.get("epochs_run"),
        },
    }


def write_metadata(path: Path, metadata: dict[str, Any]) -> Path:
    """Write `metadata` as indented JSON to `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, default=jsonable) + "\n")
    return path


def read_metadata(folder: Path) -> dict[str, Any]:
    """An export folder's metadata (`assets/metadata.json` or `metadata.json`)."""
    for candidate in (folder / "assets" / METADATA_FILE, folder / METADATA_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"{folder}: no {METADATA_FILE} (not a tfpipeline export)")
