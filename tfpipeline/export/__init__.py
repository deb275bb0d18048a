"""The export stage: a finished run folder -> a served model (SavedModel, .keras or TFLite).

Typical use::

    from tfpipeline.export import export_run, load_export

    result = export_run("runs/20250101-120000-small_cnn", out="exports")   # exports/small_cnn/1
    exported = load_export(result.path)
    probs = exported.predict_bytes([open("face.jpg", "rb").read()])      # (1, K), class order

Modules: `signatures` (the serving functions), `limits` (what a served model refuses),
`archive` (layout, versions, atomic writes), `metadata` (metadata.json, data fingerprint),
`model_card` (README.md), `tflite`, `onnx_export`, `loader`.

The names below are imported on first use, so importing `tfpipeline.export.limits` (as the
CLI does to show its defaults in `--help`) does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FORMATS": "archive",
    "ExportResult": "archive",
    "export_run": "archive",
    "ExportedModel": "loader",
    "is_export": "loader",
    "load_export": "loader",
    "ServingLimits": "limits",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tfpipeline.export' has no attribute '{name}'")
    return getattr(importlib.import_module(f"tfpipeline.export.{_WHERE[name]}"), name)
