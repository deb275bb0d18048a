"""fast_resnet and the fast-training techniques: whitening stem, identity init, schedules,
BatchNorm-offset learning rate, lookahead, pixel shifts, weight averaging (EMA) and test-time augmentation."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.data.augment import RandomShift
from tfpipeline.errors import UserError
from tfpipeline.models import build_model, get_spec
from tfpipeline.models.fast_resnet import PartialIdentity, init_whitening, whitening_weights
from tfpipeline.models.tta import with_tta
from tfpipeline.training import train
from tfpipeline.training.compile import make_optimizer, norm_offsets
from tfpipeline.training.optimizers import FastSGD, OneCycle, WarmupCosine

TINY = ModelConfig(name="fast_resnet", filters=(8, 16, 16))


def _patches(images: np.ndarray, k: int) -> np.ndarray:
    """Reference: every k x k patch as a row in (row, col, channel) order, by plain loops."""
    n, h, w, c = images.shape
    rows = []
    for b in range(n):
        for i in range(h - k + 1):
            for j in range(w - k + 1):
                rows.append(images[b, i : i + k, j : j + k, :].reshape(-1))
    return np.array(rows)


def test_whitening_kernel_decorrelates_the_training_patches():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(3, 3))  # correlated colour channels, and smooth images below
    images = rng.normal(size=(6, 7, 7, 3)) @ mixing + 0.5
    images = (images + np.roll(images, 1, axis=1)) / 2
    kernel, bias = whitening_weights(images, 2)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)

    patches = _patches(images, 2)
    out = patches @ kernel.reshape(12, 24) + bias  # what the conv computes at every position
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    covariance = np.cov(out[:, :12], rowvar=False, bias=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(patches, rowvar=False, bias=True)))[::-1]
    eps = 5e-4 * np.mean(np.diag(np.cov(patches, rowvar=False, bias=True)))
    np.testing.assert_allclose(covariance, np.diag(eigenvalues / (eigenvalues + eps)), atol=1e-4)
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-6)  # the +/- pairs

    conv = keras.layers.Conv2D(24, 2)
    conv.build((None, 7, 7, 3))
    conv.set_weights([kernel, bias])
    np.testing.assert_allclose(conv(images.astype("float32")).numpy().reshape(-1, 24), out, atol=1e-4)


def test_whitening_accumulates_in_chunks(monkeypatch):
    import tfpipeline.models.fast_resnet as module

    images = np.random.default_rng(1).random((9, 6, 6, 1))
    whole = whitening_weights(images, 2)
    monkeypatch.setattr(module, "PATCH_CHUNK", 40)  # 25 patches per image: one image per chunk
    chunked = whitening_weights(images, 2)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-5)  # eigenvector signs may differ


def test_partial_identity_passes_the_input_through():
    layer = keras.layers.Conv2D(
        5, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity(seed=1)
    )
    x = np.random.default_rng(2).random((1, 6, 6, 3)).astype("float32")
    y = layer(x).numpy()
    np.testing.assert_allclose(y[..., :3], x, atol=1e-6)  # first in_channels outputs: identity
    assert np.abs(y[..., 3:]).max() > 0  # the rest are drawn, not zero


def test_fast_resnet_builds_with_a_frozen_whitening_kernel():
    spec = get_spec("fast_resnet")
    model = build_model(TINY, (32, 32, 3), 10)
    assert model.output_shape == (None, 10)
    whiten = model.get_layer("whiten")
    assert whiten.kernel.path not in {v.path for v in model.trainable_variables}
    assert whiten.bias.path in {v.path for v in model.trainable_variables}
    images = np.random.default_rng(3).random((20, 32, 32, 3)).astype("float32")
    spec.data_init(model, images)
    np.testing.assert_allclose(whiten.kernel.numpy(), whitening_weights(images)[0], atol=1e-6)
    probs = model(images[:4]).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    plain = build_model(replace(TINY, stem="plain", activation="relu", init="default"), (16, 16, 1), 2)
    assert plain.output_shape == (None, 1) and "whiten" not in [layer.name for layer in plain.layers]
    init_whitening(plain, images[:, :16, :16, :1])  # no whitening layer: nothing to do
    with pytest.raises(UserError, match="small_cnn does not support --stem whiten"):  # fast_resnet's own stem
        get_spec("small_cnn").build(
            replace(TINY, name="small_cnn", stem="whiten", filters=()), (64, 64, 3), 10
        )
    with pytest.raises(UserError, match="--filters needs 3 values"):
        build_model(replace(TINY, filters=(8, 8)), (32, 32, 3), 10)
    with pytest.raises(UserError, match="at least 16x16"):
        build_model(TINY, (8, 8, 3), 10)


def test_one_cycle_and_warmup_cosine_schedules():
    one = OneCycle(1.0, total_steps=100, warmup=0.25)
    values = [float(one(step)) for step in (0, 25, 100)]
    assert values == pytest.approx([0.2, 1.0, 0.07])
    assert float(one(50)) == pytest.approx(1.0 - 0.93 * 25 / 75)
    cosine = WarmupCosine(2.0, total_steps=100, warmup=0.1)
    assert [float(cosine(s)) for s in (0, 5, 10, 55, 100)] == pytest.approx(
        [0.0, 1.0, 2.0, 1.0, 0.0], abs=1e-6
    )
    assert OneCycle.from_config(one.get_config()).get_config() == one.get_config()


def test_norm_lr_scale_multiplies_the_batchnorm_offset_step():
    def one_step(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()]
        )
        x, y = np.random.default_rng(0).random((8, 4)), np.random.default_rng(1).random((8, 3))
        model.compile(optimizer(model), "mse")
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.train_on_batch(x, y)
        return [(v.name, v.numpy() - b) for v, b in zip(model.trainable_variables, before, strict=True)]

    plain = one_step(lambda model: keras.optimizers.SGD(0.1))
    scaled = one_step(lambda model: FastSGD(0.1, scaled_paths=norm_offsets(model), scale=64.0))
    assert [name for name, _ in plain] == ["kernel", "bias", "gamma", "beta"]
    for (name, step), (_, scaled_step) in zip(plain, scaled, strict=True):
        factor = 64.0 if name == "beta" else 1.0
        np.testing.assert_allclose(scaled_step, factor * step, rtol=1e-5, atol=1e-8)
    config = TrainConfig(norm_lr_scale=8.0, nesterov=True, weight_decay=0.01, ema=0.9)
    model = build_model(TINY, (32, 32, 3), 10)
    optimizer = make_optimizer(config, 10, model)
    assert isinstance(optimizer, FastSGD) and len(optimizer.scaled_paths) == 6 and optimizer.use_ema
    with pytest.raises(UserError, match="--norm-lr-scale applies to --optimizer sgd"):
        TrainConfig(optimizer="adam", norm_lr_scale=2.0)


def test_lookahead_resets_the_weights_to_their_slow_average_on_schedule(tmp_path):
    """Against a reference written out by hand: Nesterov SGD, then every 2 steps
    slow += (1 - d) (w - slow) with d = 0.95**2 (step/total)**3, w = slow; at the last step w = slow."""
    total = 5
    x, y = np.random.default_rng(0).random((8, 4)), np.random.default_rng(1).random((8, 3))

    def dense():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    model, reference = dense(), dense()
    sgd = {"learning_rate": 0.3, "momentum": 0.85, "nesterov": True}
    model.compile(FastSGD(**sgd, lookahead=2, total_steps=total), "mse")
    reference.compile(keras.optimizers.SGD(**sgd), "mse")
    slow = reference.get_weights()
    for step in range(1, total + 1):
        model.train_on_batch(x, y)
        reference.train_on_batch(x, y)
        if step % 2 == 0 or step == total:
            decay = 1.0 if step == total else 0.95**2 * (step / total) ** 3
            slow = [s + (1 - decay) * (w - s) for s, w in zip(slow, reference.get_weights(), strict=True)]
            reference.set_weights(slow)
        for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    assert not np.allclose(model.get_weights()[0], dense().get_weights()[0])  # it did train

    # The slow copy is optimizer state: a checkpoint holds it, so a resumed run continues exactly.
    model.save_weights(tmp_path / "checkpoint.weights.h5")
    restored = dense()
    restored.compile(FastSGD(**sgd, lookahead=2, total_steps=total), "mse")
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(tmp_path / "checkpoint.weights.h5")
    slow_paths = [v.path for v in restored.optimizer.variables if v.path.endswith("_slow")]
    assert len(slow_paths) == 2
    for got, want in zip(restored.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

    config = TrainConfig(lookahead=5, nesterov=True)
    optimizer = make_optimizer(config, 40, build_model(TINY, (32, 32, 3), 10))
    assert isinstance(optimizer, FastSGD) and (optimizer.lookahead, optimizer.total_steps) == (5, 40)
    assert optimizer.scaled_paths == ()  # lookahead alone scales nothing
    assert FastSGD.from_config(optimizer.get_config()).get_config() == optimizer.get_config()
    with pytest.raises(UserError, match="--lookahead applies to --optimizer sgd"):
        TrainConfig(optimizer="adamw", lookahead=5)
    with pytest.raises(UserError, match="--lookahead is a number of steps"):
        TrainConfig(lookahead=-1)


def test_random_shift_moves_whole_pixels_with_reflected_borders():
    images = np.random.default_rng(4).random((16, 6, 7, 2)).astype("float32")
    shifted = RandomShift(2, seed=5)(tf.constant(images), training=True).numpy()
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    offsets = set()
    for b in range(len(images)):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[b, dy : dy + 6, dx : dx + 7], shifted[b])
        ]
        assert found, f"image {b} is not a whole-pixel shift of its input"
        offsets.add(found[0])
    assert len(offsets) > 3  # random per image
    assert np.array_equal(RandomShift(2)(images, training=False), images)


def test_tta_is_the_mean_of_image_and_mirror():
    model = build_model(TINY, (32, 32, 3), 10)
    images = np.random.default_rng(6).random((3, 32, 32, 3)).astype("float32")
    expected = (model(images).numpy() + model(images[:, :, ::-1]).numpy()) / 2
    np.testing.assert_allclose(with_tta(model, "flip")(images).numpy(), expected, atol=1e-6)
    assert with_tta(model, "none") is model

    def view(x):  # a reference flip mean, in numpy
        return (model(x).numpy() + model(x[:, :, ::-1]).numpy()) / 2

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 2:, 2:], padded[:, :-2, :-2]
    expected = 0.5 * view(images) + 0.25 * (view(up_left) + view(down_right))
    np.testing.assert_allclose(with_tta(model, "flip-shift")(images).numpy(), expected, atol=1e-5)


def _config(folder, tmp_path, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(data=str(folder), image_size=(32, 32), batch_size=4, cache="none"),
        model=TINY,
        train=TrainConfig(
            epochs=2, optimizer="sgd", lr=0.05, run_dir=str(tmp_path / "runs"), deterministic=True, **train
        ),
    )


class _RawWeights(keras.callbacks.Callback):
    """Our own running average of the raw weights after every training step (Keras' EMA starts
    from the weights after the first step)."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay, self.average = decay, None

    def on_train_batch_end(self, batch, logs=None):
        weights = [v.numpy().copy() for v in self.model.trainable_variables]
        if self.average is None:
            self.average = weights
        self.average = [
            self.decay * a + (1 - self.decay) * w for a, w in zip(self.average, weights, strict=True)
        ]
        self.raw = weights


def test_ema_run_checkpoints_the_averaged_weights(image_folder, tmp_path):
    recorder = _RawWeights(0.8)
    result = train(_config(image_folder, tmp_path, ema=0.8), extra_callbacks=[lambda *_: recorder], verbose=0)
    last = keras.models.load_model(result.run.last_checkpoint, compile=False)
    assert len(last.trainable_variables) == len(recorder.raw)  # the whitening kernel stays frozen
    saved = [v.numpy() for v in last.trainable_variables]
    for ours, _raw, kept in zip(recorder.average, recorder.raw, saved, strict=True):
        np.testing.assert_allclose(kept, ours, rtol=1e-4, atol=1e-5)  # the checkpoint holds the EMA
    assert any(not np.allclose(raw, kept, atol=1e-4) for raw, kept in zip(recorder.raw, saved, strict=True))
    with pytest.raises(UserError, match="--ema is a decay"):
        TrainConfig(ema=1.0)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


@pytest.mark.slow  # 35-43 s (three trainings); EMA checkpoints, TTA export and resume also have fast tests
def test_an_ema_lookahead_tta_run_resumes_exactly_and_exports_its_tta(image_folder, tmp_path):
    import json

    import pandas as pd

    from tfpipeline.export import export_run, load_export
    from tfpipeline.training import RunFolder
    from tfpipeline.workflow import run_training

    def config(where):
        base = _config(
            image_folder,
            tmp_path / where,
            ema=0.7,
            tta="flip",
            schedule="onecycle",
            nesterov=True,
            lookahead=2,
            norm_lr_scale=8.0,
        )
        return replace(base, train=replace(base.train, epochs=3))

    reference = run_training(config("a"), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        run_training(config("b"), extra_callbacks=[lambda *_: _Interrupt()], verbose=0)
    (folder,) = (tmp_path / "b" / "runs").iterdir()
    resumed = run_training(config("b"), run=RunFolder.open(folder), resume=True, verbose=0)
    columns = [c for c in reference.history.columns if c != "epoch_seconds"]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns], rtol=1e-5)
    assert resumed.metrics["val"]["roc_auc"] == pytest.approx(reference.metrics["val"]["roc_auc"], abs=1e-6)

    exported = export_run(resumed.run.path, out=tmp_path / "exports")
    assert exported.metadata["tta"] == "flip"
    model = load_export(exported.path)
    pixels = np.random.default_rng(7).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    plain = resumed.model(pixels / 255.0).numpy()[:, 0]
    mirrored = resumed.model(pixels[:, :, ::-1] / 255.0).numpy()[:, 0]
    served = model.predict_pixels(pixels)[:, resumed.rule.positive_index]
    np.testing.assert_allclose(served, (plain + mirrored) / 2, atol=1e-5)  # the graph averages the mirror too
    assert json.loads((exported.path / "assets" / "metadata.json").read_text())["tta"] == "flip"
