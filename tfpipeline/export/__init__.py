"""The export stage: a finished run folder -> a served model (SavedModel, .keras or TFLite).

Typical use::

    from tfpipeline.export import export_run, load_export

    result = export_run("runs/20250101-120000-small_cnn", out="exports")   # exports/small_cnn/1
    exported = load_export(result.path)
    probs = exported.predict_bytes([open("face.jpg", "rb").read()])      # (1, K), class order

Modules: `signatures` (the serving functions), `archive` (layout, versions, atomic writes),
`metadata` (metadata.json, data fingerprint), `model_card` (README.md), `tflite`, `loader`.
"""

from tfpipeline.export.archive import FORMATS, ExportResult, export_run
from tfpipeline.export.loader import ExportedModel, is_export, load_export

__all__ = ["FORMATS", "ExportResult", "ExportedModel", "export_run", "is_export", "load_export"]
