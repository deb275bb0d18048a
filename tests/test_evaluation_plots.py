"""Evaluation figures and reports: learning curves, run comparison, ROC/PR curves, confusion
matrix, reliability diagram and image grids render with the right labels; Grad-CAM on a
Sequential CNN, on a functional head around a nested backbone and on a ResNet50 backbone; the
run summary stays short and names its numbers and advice.

Metrics (vs scikit-learn) are in test_evaluation.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evaluation_scores import BINARY_NAMES, MULTI_NAMES, binary_scores, multiclass_scores
from matplotlib.figure import Figure
from sklearn import metrics as skm

from tfpipeline.evaluation import (
    expected_calibration_error,
    figure_to_png_bytes,
    plot_compare_runs,
    plot_confusion_matrix,
    plot_image_grid,
    plot_learning_curves,
    plot_precision_recall,
    plot_reliability_diagram,
    plot_roc,
    save_figure,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- plots


def _legend_texts(ax):
    legends = [ax.get_legend(), *ax.figure.legends]
    return [t.get_text() for leg in legends if leg is not None for t in leg.get_texts()]


def _check_png(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    data = figure_to_png_bytes(fig)
    assert data.startswith(PNG_MAGIC)
    path = save_figure(fig, tmp_path / f"{name}.png")
    assert path.stat().st_size > 1000


def _history(epochs=5, offset=0.0):
    e = np.arange(epochs)
    return {
        "loss": list(1.0 / (e + 1) + offset),
        "val_loss": list(1.2 / (e + 1) + offset + 0.1),
        "accuracy": list(0.5 + 0.08 * e),
        "val_accuracy": list(0.45 + 0.07 * e),
        "auc": list(0.6 + 0.07 * e),
        "val_auc": list(0.55 + 0.07 * e),
    }


def test_learning_curves_skip_missing_metrics(tmp_path):
    fig = plot_learning_curves(pd.DataFrame(_history()))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "auc"]  # precision / recall / f1 absent
    assert _legend_texts(fig.axes[0])[:2] == ["train", "val"]
    _check_png(fig, tmp_path, "curves")
    assert len(plot_learning_curves(_history(), metrics=("loss",)).axes) == 1
    with pytest.raises(ValueError):
        plot_learning_curves({"foo": [1]})


def test_learning_curves_show_the_schedule_and_an_early_stop():
    history = {**_history(), "learning_rate": [0.1, 0.2, 0.3, 0.15, 0.01]}
    fig = plot_learning_curves(history, planned_epochs=20)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "auc", "learning rate"]
    lr_line = fig.axes[-1].lines[0]
    np.testing.assert_allclose(lr_line.get_ydata(), history["learning_rate"])
    assert "early stopping after epoch 5 of 20" in fig._suptitle.get_text()
    assert all("early stop" in _legend_texts(ax) for ax in fig.axes)
    # A run that used all its epochs has no early-stop mark.
    full = plot_learning_curves(history, planned_epochs=5)
    assert "early" not in full._suptitle.get_text() and "early stop" not in _legend_texts(full.axes[0])


def test_compare_runs_legend_has_run_labels(tmp_path):
    fig = plot_compare_runs({"baseline": pd.DataFrame(_history()), "dropout": _history(offset=0.2)}, "loss")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4
    texts = _legend_texts(ax)
    assert "baseline" in texts and "dropout" in texts and "train" in texts
    _check_png(fig, tmp_path, "compare")


@pytest.mark.parametrize("plot", [plot_roc, plot_precision_recall])
def test_curves_binary_and_multiclass(plot, tmp_path):
    y, probs = binary_scores()
    fig = plot(y, probs, BINARY_NAMES)
    texts = _legend_texts(fig.axes[0])
    assert len(texts) == 2 and texts[0].startswith("dog (") and "chance" in texts[1]
    _check_png(fig, tmp_path, f"{plot.__name__}_bin")
    ym, pm = multiclass_scores()
    fig = plot(ym, pm, MULTI_NAMES)
    texts = _legend_texts(fig.axes[0])
    assert [t.split(" (")[0] for t in texts[: len(MULTI_NAMES)]] == MULTI_NAMES
    _check_png(fig, tmp_path, f"{plot.__name__}_multi")


def test_roc_survives_single_class():
    y, probs = binary_scores()
    fig = plot_roc(np.zeros_like(y), probs, BINARY_NAMES)
    assert "undefined" in _legend_texts(fig.axes[0])[0]


def test_confusion_matrix_two_annotated_panels(tmp_path):
    y, probs = multiclass_scores()
    pred = probs.argmax(axis=1)
    fig = plot_confusion_matrix(y, pred, MULTI_NAMES)
    counts, normalised = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in counts.get_xticklabels()] == MULTI_NAMES
    assert len(counts.texts) == len(MULTI_NAMES) ** 2
    cm = skm.confusion_matrix(y, pred)
    assert counts.texts[0].get_text() == str(cm[0, 0])
    assert normalised.texts[0].get_text() == f"{cm[0, 0] / cm[0].sum():.2f}"
    _check_png(fig, tmp_path, "cm")


def test_reliability_diagram_shows_ece(tmp_path):
    y, probs = multiclass_scores()
    fig = plot_reliability_diagram(y, probs, n_bins=10)
    assert len(fig.axes) == 2
    assert f"ECE = {expected_calibration_error(y, probs, 10):.3f}" in fig.axes[0].get_title()
    _check_png(fig, tmp_path, "reliability")


def test_image_grid_rgb_and_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.random((5, 8, 8, 3))
    fig = plot_image_grid(rgb, [f"img {i}" for i in range(5)], ncols=3, suptitle="samples")
    visible = [ax for ax in fig.axes if ax.images]
    assert len(visible) == 5 and visible[4].get_title() == "img 4"
    _check_png(fig, tmp_path, "grid")
    gray = (rng.random((2, 8, 8, 1)) * 255).astype(np.uint8)
    fig = plot_image_grid(gray, ["a", "b"])
    assert fig.axes[0].images[0].get_cmap().name == "gray"


# ----------------------------------------------------------------------------- Grad-CAM


@pytest.fixture(scope="module")
def cam_models():
    import keras

    keras.utils.set_random_seed(7)
    size = (24, 24, 3)
    sequential = keras.Sequential(
        [
            keras.Input(size),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, activation="relu", name="last_conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    b_in = keras.Input(size)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(b_in)
    b2 = keras.layers.Conv2D(4, 3, padding="same", name="backbone_last_conv")(b)
    b = keras.layers.Activation("relu")(keras.layers.Add()([b, b2]))  # ResNet-style skip
    backbone = keras.Model(b_in, b, name="backbone")
    backbone.trainable = False  # like a frozen pretrained backbone
    inputs = keras.Input(size)
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    nested = keras.Model(inputs, outputs, name="head")
    images = np.random.default_rng(0).random((3, *size)).astype("float32")
    return sequential, nested, images


def test_find_last_conv_layer(cam_models):
    from tfpipeline.evaluation import find_last_conv_layer

    sequential, nested, _ = cam_models
    assert find_last_conv_layer(sequential) == ("last_conv",)
    assert find_last_conv_layer(nested) == ("backbone", "backbone_last_conv")


@pytest.mark.parametrize("which", [0, 1])
def test_gradcam_heatmaps(cam_models, which, tmp_path):
    from tfpipeline.evaluation import gradcam_heatmaps, overlay_heatmap, plot_gradcam_grid

    model, images = cam_models[which], cam_models[2]
    heat = gradcam_heatmaps(model, images)
    assert heat.shape == images.shape[:3]
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0) and np.all(heat.std(axis=(1, 2)) > 1e-3)
    explicit = gradcam_heatmaps(model, images, class_index=[0, 1, 0] if which == 0 else 2)
    assert explicit.shape == heat.shape and np.all((explicit >= 0) & (explicit <= 1))
    overlay = overlay_heatmap(images[0], heat[0])
    assert overlay.dtype == np.uint8 and overlay.shape == images.shape[1:3] + (3,)
    fig = plot_gradcam_grid(images, heat, ["a", "b", "c"])
    assert sum(1 for ax in fig.axes if ax.images) == 6
    _check_png(fig, tmp_path, "gradcam")


def test_gradcam_resnet50_backbone():
    """The real resnet50_head shape: ResNet50 (random weights, frozen) nested in a functional head."""
    import keras

    from tfpipeline.evaluation import find_last_conv_layer, gradcam_heatmaps

    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    backbone.trainable = False
    inputs = keras.Input((64, 64, 3))
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    assert find_last_conv_layer(model) == ("resnet50", "conv5_block3_3_conv")
    heat = gradcam_heatmaps(model, np.random.default_rng(1).random((1, 64, 64, 3)) * 255.0)
    assert heat.shape == (1, 64, 64) and 0.0 <= heat.min() <= heat.max() <= 1.0


# ----------------------------------------------------------------------------- summary


def _facts(**overrides):
    facts = {
        "run_name": "small_cnn-20250101",
        "data_source": "faces",
        "class_names": ["no_face", "face"],
        "split_counts": {"train": {"no_face": 600, "face": 150}, "val": 125, "test": 125},
        "model_name": "small_cnn",
        "model_params": 123456,
        "epochs_run": 5,
        "epochs_planned": 5,
        "optimizer": "sgd",
        "lr": 1e-3,
        "schedule": "none",
        "early_stopping": 0,
        "train_seconds": 42.5,
        "pretrained": False,
        "pretrained_models": ["resnet50_head"],
        "augmentation": False,
        "class_weight": "none",
        "threshold_policy": "0.5",
        "threshold": 0.5,
        "train_metrics": {"accuracy": 0.991, "loss": 0.04},
        "val_metrics": {"accuracy": 0.8312, "f1": 0.6543, "roc_auc": 0.9021, "ece": 0.12, "num_samples": 125},
        "test_metrics": {"accuracy": 0.8205, "f1": 0.6111, "roc_auc": 0.8876, "confusion_matrix": [[1]]},
    }
    facts.update(overrides)
    return facts


def test_summary_has_numbers_and_advice():
    text = write_summary(_facts())
    assert len(text.split()) <= 500
    for number in ("0.831", "0.654", "0.902", "0.821", "0.611", "0.888", "123,456", "750"):
        assert number in text
    lowered = text.lower()
    assert "overfitting" in lowered and "augmentation" in lowered  # 0.991 train vs 0.831 val
    assert "pretrained" in lowered and "`resnet50_head`" in text  # 750 training images, from scratch
    assert "class-weight balanced" in lowered  # 600 vs 150
    assert "temperature scaling" in lowered  # ECE 0.12
    assert "confusion_matrix" not in text and "num_samples" not in text


def test_summary_word_limit_with_many_classes():
    names = [f"class_{i:03d}" for i in range(300)]
    counts = {split: {n: 10 for n in names} for split in ("train", "val", "test")}
    metrics = {f"metric_{i}": i / 100 for i in range(50)}
    text = write_summary(
        _facts(class_names=names, split_counts=counts, val_metrics=metrics, test_metrics=metrics)
    )
    assert len(text.split()) <= 500


def test_summary_missing_keys_fail_clearly():
    facts = _facts()
    del facts["model_name"], facts["val_metrics"]
    with pytest.raises(ValueError, match="model_name, val_metrics"):
        write_summary(facts)


# ----------------------------------------------------------------------------- epoch figures


def test_epoch_figures_log_every_n_epochs_and_the_last(tmp_path):
    """`--epoch-figures 2` over 5 epochs logs the ROC and confusion images at epochs 2, 4 and 5."""
    import keras
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tfpipeline.decision import DecisionRule
    from tfpipeline.evaluation.callbacks import EpochFigures

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rule = DecisionRule.for_classes("0.5", ["a", "b", "c"])
    callback = EpochFigures(tmp_path, dataset, y, ["a", "b", "c"], rule, every=2)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[callback])

    events = EventAccumulator(str(tmp_path / "validation_figures"), size_guidance={"images": 0}).Reload()
    for tag in ("roc", "confusion_matrix"):
        steps = [event.step for event in events.Tensors(tag)]
        assert steps == [1, 3, 4], tag  # 0-based epochs: the 2nd, the 4th, and the last (5th)
    with pytest.raises(ValueError, match="every"):
        EpochFigures(tmp_path, dataset, y, ["a", "b", "c"], rule, every=0)
