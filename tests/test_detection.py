"""Real-vs-fake detection pieces: self-blended fakes, region names, folds, high-pass stems,
crops, the per-difficulty breakdown and the FGSM robustness attack."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpipeline.cli import main
from tfpipeline.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.data.blend import SelfBlend
from tfpipeline.data.regions import parse_region_name
from tfpipeline.data.split import Split, apply_fold, stratified_folds
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.evaluation.adversarial import fgsm, parse_epsilons
from tfpipeline.evaluation.breakdown import fake_breakdown
from tfpipeline.models import build_model
from tfpipeline.models.stems import NeighbourResidual, SRMFilters


def faces(n=8, size=48, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 220, (n, 1, 1, 3))
    texture = rng.normal(0, 12, (n, size, size, 3))
    return np.clip(base + texture, 0, 255).astype(np.float32)


def test_blended_pixels_change_only_inside_a_soft_mask():
    images = faces()
    labels = tf.constant([1] * 6 + [0] * 2)  # 1 = real, 0 = fake
    out, new_labels, regions, masks = SelfBlend(0.75, real_index=1, fake_index=0, seed=4).blend(
        images, labels
    )
    out, masks = out.numpy(), masks.numpy()[..., 0]
    changed = np.abs(out - images).max(axis=-1) > 1e-4
    assert not np.any(changed & (masks == 0)), "a pixel outside the mask changed"
    converted = np.flatnonzero(masks.reshape(8, -1).max(axis=1) > 0)
    assert set(converted) <= set(range(6)) and len(converted) >= 1  # only real faces are converted
    assert np.all(new_labels.numpy()[converted] == 0) and np.all(new_labels.numpy()[6:] == 0)
    soft = masks[converted]
    assert np.any((soft > 0.05) & (soft < 0.95)), "the mask edge should be soft"
    assert soft.max() == pytest.approx(1.0) and np.all(regions.numpy()[6:] == -1)
    np.testing.assert_array_equal(out[6:], images[6:])  # fakes pass unchanged


def test_blending_is_deterministic_under_a_seed():
    images, labels = faces(6), tf.ones(6, tf.int32)
    a = SelfBlend(1.0, 1, 0, seed=11)(images, labels)[0].numpy()
    b = SelfBlend(1.0, 1, 0, seed=11)(images, labels)[0].numpy()
    c = SelfBlend(1.0, 1, 0, seed=12)(images, labels)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_synth_fakes_need_a_real_fake_task(image_folder, tmp_path, capsys):
    argv = ["train", "--data", str(image_folder), "--synth-fakes", "0.3", "--image-size", "32"]
    assert main([*argv, "--padding", "same", "--epochs", "1", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--synth-fakes needs a two-class real/fake task" in err and "blue, red" in err
    assert "--fake-class" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("easy_100_1111.jpg", ("easy", ("left_eye", "right_eye", "nose", "mouth"))),
        ("mid_7_0011.jpg", ("mid", ("nose", "mouth"))),
        ("HARD_12_1000.png", ("hard", ("left_eye",))),
        ("real_00001.jpg", None),
        ("easy_100_111.jpg", None),
        ("medium_1_1111.jpg", None),
    ],
)
def test_region_labels_from_file_names(name, expected):
    label = parse_region_name(f"/data/fake/{name}")
    assert (label.difficulty, label.regions) == expected if expected else label is None


def test_folds_are_disjoint_stratified_and_cover_the_data():
    labels = np.array([0] * 30 + [1] * 20)
    folds = stratified_folds(labels, 5, seed=101)
    everything = np.concatenate(folds)
    assert sorted(everything) == list(range(50))  # cover, and disjoint (no repeats)
    for held in folds:
        assert np.bincount(labels[held]).tolist() == [6, 4]  # stratified
    assert [f.tolist() for f in stratified_folds(labels, 5, seed=101)] == [f.tolist() for f in folds]
    splits = {
        "train": Split(labels=labels[:40], paths=tuple(f"f{i}" for i in range(40))),
        "val": Split(labels=labels[40:], paths=tuple(f"f{i}" for i in range(40, 50))),
        "test": Split(labels=np.array([0, 1]), paths=("t0", "t1")),
    }
    k2 = apply_fold(splits, (2, 5), seed=101)
    assert len(k2["val"]) == 10 and len(k2["train"]) == 40 and k2["test"] is splits["test"]
    assert not set(k2["val"].paths) & set(k2["train"].paths)
    with pytest.raises(UserError, match="at least 5 images of every class"):
        stratified_folds(np.array([0] * 10 + [1] * 3), 5, seed=1)


def test_high_pass_stems_ignore_flat_regions():
    flat = np.full((1, 16, 16, 3), 0.4, np.float32)
    assert np.abs(SRMFilters()(flat).numpy()[:, 3:-3, 3:-3]).max() < 1e-5  # no residue away from borders
    assert SRMFilters()(flat).shape == (1, 16, 16, 9)
    checker = np.indices((16, 16)).sum(axis=0) % 2
    noisy = np.repeat(checker[None, :, :, None], 3, axis=-1).astype(np.float32)
    assert np.abs(SRMFilters()(noisy).numpy()).max() == pytest.approx(1.0)  # truncated residue
    assert np.abs(NeighbourResidual()(flat).numpy()).max() == 0
    assert np.abs(NeighbourResidual()(noisy).numpy()).max() > 0


def test_srm_residuals_are_computed_in_float32_under_bfloat16():
    """A one-grey-level step at a bright pixel is below bfloat16's resolution; the stem keeps it."""
    image = np.full((1, 16, 16, 3), 200 / 255, np.float32)
    image[0, 8, 8] += 1 / 255
    exact = SRMFilters()(image).numpy()
    mixed = SRMFilters(dtype="mixed_bfloat16")
    residue = mixed(image)
    assert residue.dtype == "bfloat16" and mixed.compute_dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(residue, np.float32), exact, atol=1e-2)
    assert np.abs(exact).max() > 0.1  # the step shows in the residue


def test_crop_training_needs_a_model_of_any_size(image_folder, tmp_path):
    from tfpipeline.training import train

    base = RunConfig(
        data=DataConfig(data=str(image_folder), image_size=(40, 40), crop=24, batch_size=4),
        model=ModelConfig(name="fast_resnet", filters=(8, 8, 8)),
        train=TrainConfig(epochs=1, run_dir=str(tmp_path / "runs")),
    )
    result = train(base, verbose=0)
    assert result.model.input_shape == (None, None, None, 3)  # trained on 24px, validated on 40px
    with pytest.raises(UserError, match="--crop trains on windows .* small_cnn does not"):
        train(
            RunConfig(data=base.data, model=ModelConfig(name="small_cnn", padding="same"), train=base.train),
            verbose=0,
        )
    with pytest.raises(UserError, match="--crop must be a size up to the image size"):
        DataConfig(image_size=(40, 40), crop=64)


def test_breakdown_by_difficulty_and_region():
    names = ("fake", "real")
    paths = ["easy_1_1000.jpg", "hard_2_0011.jpg", "hard_3_0001.jpg", "real_1.jpg", "real_2.jpg"]
    y = np.array([0, 0, 0, 1, 1])
    fake_score = np.array([0.9, 0.2, 0.7, 0.1, 0.4])
    probs = np.stack([fake_score, 1 - fake_score], axis=1)
    rule = DecisionRule.for_classes("0.5", names, "fake")
    out = fake_breakdown(paths, y, probs, rule, names, "fake")
    assert out["difficulty"]["easy"] == {"count": 1, "detected": 1, "recall": 1.0, "auc": 1.0}
    assert out["difficulty"]["hard"]["count"] == 2 and out["difficulty"]["hard"]["recall"] == 0.5
    assert out["difficulty"]["hard"]["auc"] == pytest.approx(0.75)  # 0.2 and 0.7 vs reals 0.1, 0.4
    assert out["difficulty"]["mid"]["count"] == 0 and out["region"]["mouth"]["count"] == 2
    assert fake_breakdown(["a.jpg", "b.jpg"], y[:2], probs[:2], rule, names, "fake") == {}


def test_fgsm_moves_every_input_by_epsilon_along_the_gradient_sign():
    model = build_model(ModelConfig(name="small_cnn", padding="same"), (16, 16, 3), 2)
    images = np.random.default_rng(5).uniform(0.1, 0.9, (4, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    same, _ = fgsm(model, images, labels, 0.0, "unit", positive_index=1)
    np.testing.assert_array_equal(same, images)
    moved, sign = fgsm(model, images, labels, 2 / 255, "unit", positive_index=1)
    np.testing.assert_allclose(moved - images, (2 / 255) * sign, atol=1e-6)  # inside [0, 1]: no clipping
    assert np.mean(sign != 0) > 0.5
    raw, raw_sign = fgsm(model, images * 255, labels, 2 / 255, "raw", positive_index=1)
    np.testing.assert_allclose(raw - images * 255, 2.0 * raw_sign, atol=1e-3)  # 2 grey levels on raw pixels
    assert parse_epsilons("1/255, 0.5") == pytest.approx((1 / 255, 0.5))
    with pytest.raises(UserError, match="--eps"):
        parse_epsilons("2/0")


def test_region_targets_from_names_and_the_masked_loss():
    from tfpipeline.data.pipeline import region_targets_of
    from tfpipeline.models.aux import masked_region_loss

    split = Split(
        labels=np.array([0, 0, 1, 0]),
        paths=("f/easy_1_1001.jpg", "f/other.jpg", "r/real_2.jpg", "f/hard_3_0100.jpg"),
    )
    targets = region_targets_of(split, ("fake", "real"), "fake")
    assert targets.tolist() == [[1, 0, 0, 1], [-1, -1, -1, -1], [0, 0, 0, 0], [0, 1, 0, 0]]
    with pytest.raises(UserError, match="--aux-regions and --region-crops need a real/fake task"):
        region_targets_of(split, ("cat", "dog"), "fake")
    probs = np.full((4, 4), 0.5, np.float32)
    unknown_changed = probs.copy()
    unknown_changed[1] = 0.99  # the unknown row must not matter
    assert float(masked_region_loss(targets, probs)) == pytest.approx(
        float(masked_region_loss(targets, unknown_changed))
    )
    assert float(masked_region_loss(targets, probs)) == pytest.approx(np.log(2), rel=1e-4)


def test_aux_region_head_trains_and_serves_as_a_plain_classifier(tmp_path):
    from PIL import Image

    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.models import AuxRegionModel
    from tfpipeline.workflow import run_training

    rng = np.random.default_rng(3)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("fake", "real"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                name = f"easy_{i}_10{i % 2}1.jpg" if cls == "fake" else f"real_{i}.jpg"
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name)
    config = RunConfig(
        data=DataConfig(
            data=str(tmp_path / "data"), image_size=(32, 32), batch_size=4, positive_class="fake"
        ),
        model=ModelConfig(name="fast_resnet", filters=(8, 8, 8), aux_regions=0.2),
        train=TrainConfig(epochs=1, run_dir=str(tmp_path / "runs")),
    )
    result = run_training(config, verbose=0)
    import keras

    saved = keras.models.load_model(result.run.best_checkpoint, compile=False)
    assert isinstance(saved, AuxRegionModel) and len(saved.network.outputs) == 2
    plain = load_run_model(open_run(result.run.path))
    assert len(plain.outputs) == 1 and plain.output_shape == (None, 1)
    with pytest.raises(UserError, match="--aux-regions is available for fast_resnet, not small_cnn"):
        run_training(
            RunConfig(data=config.data, model=ModelConfig(name="small_cnn", padding="same", aux_regions=0.1)),
            verbose=0,
        )
