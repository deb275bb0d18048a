"""Evaluation: metrics, figures, Grad-CAM and a written summary, all over numpy predictions.

The Grad-CAM functions need TensorFlow; they are imported on first use so that metrics, plots
and summaries stay cheap to import.
"""

from typing import Any

from tfpipeline.evaluation.metrics import (
    as_class_probs,
    classification_metrics,
    classification_report_text,
    expected_calibration_error,
    reliability_table,
    top_loss_titles,
    top_losses,
)
from tfpipeline.evaluation.plots import (
    figure_to_png_bytes,
    plot_compare_runs,
    plot_confusion_matrix,
    plot_image_grid,
    plot_learning_curves,
    plot_precision_recall,
    plot_reliability_diagram,
    plot_roc,
    save_figure,
)
from tfpipeline.evaluation.summary import write_summary

__all__ = [
    "as_class_probs",
    "classification_metrics",
    "compare_runs",
    "classification_report_text",
    "evaluate_run",
    "expected_calibration_error",
    "figure_to_png_bytes",
    "find_last_conv_layer",
    "gradcam_heatmaps",
    "load_predictor",
    "overlay_heatmap",
    "plot_compare_runs",
    "plot_confusion_matrix",
    "plot_gradcam_grid",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_precision_recall",
    "plot_reliability_diagram",
    "plot_roc",
    "predict_files",
    "reliability_table",
    "save_figure",
    "top_loss_titles",
    "top_losses",
    "write_summary",
]

_GRADCAM = ("find_last_conv_layer", "gradcam_heatmaps", "overlay_heatmap", "plot_gradcam_grid")
# The run-level commands (they load TensorFlow and the training stage), imported on first use.
_LAZY = {
    **{name: "gradcam" for name in _GRADCAM},
    "evaluate_run": "evaluate",
    "compare_runs": "compare",
    "load_predictor": "predict",
    "predict_files": "predict",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"tfpipeline.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'tfpipeline.evaluation' has no attribute '{name}'")
