"""Tests for the model registry: shapes, heads, sizes, weights handling and serialisation.

Everything runs on tiny inputs; ResNet50 is built as few times as possible (module fixtures)
because each build costs a couple of seconds on a small CPU.
"""

from __future__ import annotations

import urllib.error
from functools import cache

import keras
import numpy as np
import pytest

from tfpipeline import models
from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError

RNG = np.random.default_rng(0)

# A small input each model accepts with its default options (small_cnn's valid padding needs 46).
SMALL_SIDE = {"small_cnn": 48, "keras_cnn": 16, "resnet50_head": 32, "fast_resnet": 16}


def config_for(name: str, **overrides) -> ModelConfig:
    """A config for `name` that never touches the network (ResNet50 with random weights)."""
    if name == "resnet50_head":
        overrides.setdefault("weights", "none")
    return ModelConfig(name=name, **overrides)


@cache
def built(name: str, channels: int, num_classes: int) -> keras.Model:
    """Build (once per test module run) each registered model at its small test size."""
    side = SMALL_SIDE[name]
    return models.build_model(config_for(name), (side, side, channels), num_classes)


def images(model: keras.Model, n: int = 3) -> np.ndarray:
    """Random pixels in the range the model's spec asks for, matching the model's input shape."""
    shape = (n, *model.input_shape[1:])
    high = 255.0 if models.MODELS[model.name].input_scaling == "raw" else 1.0
    return RNG.uniform(0.0, high, shape).astype("float32")


@pytest.fixture(scope="module")
def resnet_binary() -> keras.Model:
    return built("resnet50_head", 3, 2)


def test_registry_entries_are_complete():
    assert set(models.MODELS) == {"small_cnn", "resnet50_head", "keras_cnn", "fast_resnet"}
    for spec in models.MODELS.values():
        assert spec.description and "\n" not in spec.description
        assert spec.input_scaling in ("unit", "raw")
        assert spec.min_image_size >= 1
    assert models.MODELS["resnet50_head"].input_scaling == "raw"
    assert models.MODELS["small_cnn"].min_image_size == 16


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_binary_head_is_one_sigmoid_probability_and_uncompiled(name):
    model = built(name, 3, 2)
    probs = keras.ops.convert_to_numpy(model(images(model), training=False))
    assert probs.shape == (3, 1)
    assert np.all((probs >= 0.0) & (probs <= 1.0))
    assert model.get_layer("output").activation is keras.activations.sigmoid
    # Keras 3: an uncompiled model reports compiled=False and has no optimizer attribute yet.
    assert model.compiled is False
    assert getattr(model, "optimizer", None) is None


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_multiclass_head_is_softmax_and_grayscale_input_works(name):
    model = built(name, 1, 4)
    assert model.input_shape[-1] == 1
    probs = keras.ops.convert_to_numpy(model(images(model), training=False))
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(probs >= 0.0)


@pytest.mark.parametrize("num_classes", [0, 1])
def test_fewer_than_two_classes_is_a_user_error(num_classes):
    with pytest.raises(UserError, match="at least 2 classes"):
        models.build_model(ModelConfig(), (48, 48, 3), num_classes)


def test_unknown_model_name_lists_known_models():
    with pytest.raises(UserError) as info:
        models.build_model(ModelConfig(name="vgg99"), (64, 64, 3), 2)
    message = str(info.value)
    assert "vgg99" in message
    assert all(name in message for name in models.MODELS)


def test_bad_channel_count_is_a_user_error():
    with pytest.raises(UserError, match="channels"):
        models.build_model(ModelConfig(), (64, 64, 4), 2)


@pytest.mark.parametrize(
    ("batchnorm", "trainable", "non_trainable"), [(False, 1_250_657, 0), (True, 1_250_753, 96)]
)
def test_small_cnn_matches_the_reference_parameter_counts(batchnorm, trainable, non_trainable):
    model = models.build_model(ModelConfig(batchnorm=batchnorm), (224, 224, 3), 2)
    assert isinstance(model, keras.Sequential)
    assert models.parameter_counts(model) == (trainable, non_trainable)
    assert model.count_params() == trainable + non_trainable


def test_small_cnn_layer_order_and_names():
    config = ModelConfig(batchnorm=True, dropout=True, dropout_rate=0.3)
    model = models.build_model(config, (64, 64, 3), 3)
    names = [layer.name for layer in model.layers]
    assert names == [
        "conv1", "pool1", "bn1", "conv2", "pool2", "bn2", "conv3", "pool3", "conv4", "pool4",
        "flatten", "dense1", "dropout1", "dense2", "dropout2", "dense3", "output",
    ]  # fmt: skip
    assert [model.get_layer(f"conv{i}").filters for i in range(1, 5)] == [16, 32, 64, 64]
    assert model.get_layer("dropout1").rate == pytest.approx(0.3)
    assert model.get_layer("output").units == 3


def test_small_cnn_filter_and_unit_overrides_and_l2():
    config = ModelConfig(filters=(4, 4, 8, 8), dense_units=(12, 6, 3), l2=1e-3)
    model = models.build_model(config, (48, 48, 3), 2)
    assert [model.get_layer(f"conv{i}").filters for i in range(1, 5)] == [4, 4, 8, 8]
    assert [model.get_layer(f"dense{i}").units for i in range(1, 4)] == [12, 6, 3]
    model(images(model))
    assert len(model.losses) == 8  # one L2 penalty per conv/dense kernel, output included
    with pytest.raises(UserError, match="needs 4 values"):
        models.build_model(ModelConfig(filters=(8, 8)), (48, 48, 3), 2)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_spec_min_image_size_is_the_real_limit(name):
    side = models.MODELS[name].min_image_size
    config = config_for(name, padding="same")
    with pytest.raises(UserError, match=f"{side}x{side}"):
        models.build_model(config, (side - 1, side + 5, 3), 2)
    if name != "resnet50_head":  # resnet50_head is built at exactly 32x32 by the fixtures
        assert models.build_model(config, (side, side, 3), 2).output_shape == (None, 1)


def test_min_side_formula():
    assert models.min_conv_pool_side(4, "valid") == 46
    assert models.min_conv_pool_side(4, "same") == 16
    assert models.min_conv_pool_side(2, "valid") == 10


def test_small_cnn_valid_padding_minimum_is_46_and_error_suggests_same():
    model = models.build_model(ModelConfig(filters=(2, 2, 2, 2)), (46, 46, 3), 2)
    assert model.get_layer("pool4").output.shape[1:3] == (1, 1)
    with pytest.raises(UserError) as info:
        models.build_model(ModelConfig(), (45, 60, 3), 2)
    message = str(info.value)
    assert "46x46" in message and "45x60" in message and "--padding same" in message


def test_same_padding_allows_small_images():
    cifar = models.build_model(ModelConfig(padding="same"), (32, 32, 3), 10)
    assert cifar.output_shape == (None, 10)
    models.build_model(ModelConfig(padding="same"), (16, 16, 1), 2)
    with pytest.raises(UserError, match="16x16"):
        models.build_model(ModelConfig(padding="same"), (8, 8, 1), 10)
    digits = models.build_model(ModelConfig(name="keras_cnn", padding="same"), (8, 8, 1), 10)
    assert digits.output_shape == (None, 10)
    with pytest.raises(UserError, match="10x10"):
        models.build_model(ModelConfig(name="keras_cnn"), (8, 8, 1), 10)


def test_keras_cnn_structure_with_dropout():
    model = models.build_model(ModelConfig(name="keras_cnn", dropout=True), (28, 28, 1), 10)
    names = [layer.name for layer in model.layers]
    assert names == ["conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "dropout1", "output"]
    assert model.get_layer("dense1").units == 128


def test_resnet50_head_too_small_image():
    with pytest.raises(UserError, match="32x32"):
        models.build_model(config_for("resnet50_head"), (31, 64, 3), 2)


def test_resnet50_head_structure_and_preprocessing(resnet_binary):
    backbone = resnet_binary.get_layer("resnet50")
    assert backbone.trainable is False
    assert backbone.trainable_weights == []
    assert [layer.units for layer in resnet_binary.layers if layer.name.startswith("dense")] == [512, 128, 32]
    pixels = RNG.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    layer = resnet_binary.get_layer("resnet50_preprocess")
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), expected, rtol=1e-6)
    # Grayscale is tiled to three equal channels before the same preprocessing.
    grey = pixels[..., :1]
    tiled = keras.applications.resnet50.preprocess_input(np.repeat(grey, 3, axis=-1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(grey)), tiled, rtol=1e-6)


def test_imagenet_download_failure_offline_is_a_user_error(monkeypatch, tmp_path):
    # Reproduce the offline path exactly: keras' get_file (with an empty cache dir, so nothing
    # cached is used) calls urlretrieve, which fails the way DNS failure does.
    from keras.src.utils import file_utils

    real_get_file = file_utils.get_file

    def offline_urlretrieve(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", offline_urlretrieve)
    monkeypatch.setattr(
        file_utils, "get_file", lambda *a, **k: real_get_file(*a, **{**k, "cache_dir": str(tmp_path)})
    )
    with pytest.raises(UserError) as info:
        models.build_model(ModelConfig(name="resnet50_head", weights="imagenet"), (32, 32, 3), 2)
    message = str(info.value)
    assert "ImageNet" in message and "--weights none" in message and "--weights PATH" in message


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(UserError, match="nope.weights.h5"):
        models.build_model(config_for("resnet50_head", weights=str(missing)), (32, 32, 3), 2)


def test_weights_file_must_be_h5(tmp_path):
    wrong = tmp_path / "backbone.bin"
    wrong.write_bytes(b"not weights")
    with pytest.raises(UserError, match=r"backbone\.bin is not a \.h5"):
        models.build_model(config_for("resnet50_head", weights=str(wrong)), (32, 32, 3), 2)


def test_local_weights_file_loads_into_backbone(resnet_binary, tmp_path):
    source = resnet_binary.get_layer("resnet50")
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(str(path))
    model = models.build_model(config_for("resnet50_head", weights=str(path)), (32, 32, 3), 2)
    loaded = model.get_layer("resnet50").get_weights()
    expected = source.get_weights()
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_fine_tune_layers_unfreezes_the_tail_but_not_batchnorm(resnet_binary):
    n = 12
    model = models.build_model(config_for("resnet50_head", fine_tune_layers=n), (32, 32, 3), 2)
    backbone = model.get_layer("resnet50")
    tail = backbone.layers[-n:]
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.trainable is False
            assert layer.trainable_weights == []
    assert not any(layer.trainable for layer in backbone.layers[:-n])
    expected = sum(
        int(np.prod(w.shape))
        for layer in tail
        if not isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.weights
    )
    assert expected > 0
    backbone_trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    assert backbone_trainable == expected
    frozen_total = models.parameter_counts(resnet_binary)
    tuned_total = models.parameter_counts(model)
    assert tuned_total[0] == frozen_total[0] + expected
    assert sum(tuned_total) == sum(frozen_total)


@pytest.mark.parametrize("name", ["small_cnn", "resnet50_head"])
def test_keras_save_load_round_trip_gives_identical_predictions(name, tmp_path):
    config = config_for(name, batchnorm=True, dropout=True)
    model = built(name, 3, 2) if name == "resnet50_head" else models.build_model(config, (48, 48, 3), 2)
    x = images(model)
    before = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects, safe_mode on
    after = keras.ops.convert_to_numpy(reloaded(x, training=False))
    np.testing.assert_array_equal(before, after)
    assert models.parameter_counts(reloaded) == models.parameter_counts(model)
    assert [layer.trainable for layer in reloaded.layers] == [layer.trainable for layer in model.layers]


def test_model_summary_text():
    text = models.model_summary(ModelConfig(), (224, 224, 3), 2)
    assert text.startswith("small_cnn:")
    assert "conv1" in text and "output" in text
    assert "trainable parameters: 1,250,657" in text
    assert "non-trainable parameters: 0" in text
