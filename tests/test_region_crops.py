"""Region-crop models (`--region-crops`): the crops, the per-region training targets, and a run
that trains, evaluates, explains and exports like any other."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EXPORT_TOLERANCE

from tfpipeline.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from tfpipeline.data.regions import FACE_LAYOUT, REGIONS
from tfpipeline.errors import UserError
from tfpipeline.models import build_model, main_model
from tfpipeline.models.precision import as_float32
from tfpipeline.models.region_crops import RegionCropModel, RegionCrops, region_class_targets


def images(n=2, size=64, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def test_inference_crops_are_the_pixels_around_each_layout_region():
    x = images(2, 64)
    crops = np.asarray(RegionCrops(20)(x, training=False))
    assert crops.shape == (8, 20, 20, 3)
    for r, region in enumerate(REGIONS):
        cx, cy = FACE_LAYOUT[region][:2]
        top = min(max(round(cy * 64 - 10), 0), 44)
        left = min(max(round(cx * 64 - 10), 0), 44)
        for n in range(2):  # image-major order: image n's regions are rows 4n .. 4n + 3
            np.testing.assert_allclose(crops[4 * n + r], x[n, top : top + 20, left : left + 20], atol=1e-6)


def test_training_crops_shift_within_the_jitter_flip_and_repeat_under_a_seed():
    x = images(3, 48, seed=1)
    layer = RegionCrops(16, jitter=3, seed=5)
    crops = np.asarray(layer(x, training=True))
    corners = layer.corners(48, 48)
    moved = flipped = 0
    for row, crop in enumerate(crops):
        n, r = divmod(row, 4)
        found = None
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                top, left = np.clip(corners[r] + (dy, dx), 0, 48 - 16)
                window = x[n, top : top + 16, left : left + 16]
                for mirrored, candidate in ((False, window), (True, window[:, ::-1])):
                    if np.allclose(crop, candidate, atol=1e-6):
                        found = (top, left, mirrored)
        assert found is not None, f"crop {row} is no window within 3 px of its box, flipped or not"
        moved += tuple(found[:2]) != tuple(corners[r])
        flipped += found[2]
    assert moved > 0 and 0 < flipped < len(crops)
    again = np.asarray(RegionCrops(16, jitter=3, seed=5)(x, training=True))
    np.testing.assert_array_equal(crops, again)


def test_grad_cam_maps_go_back_where_their_crops_came_from():
    layer = RegionCrops(10)
    maps = np.arange(1, 9, dtype=np.float32).repeat(100).reshape(8, 10, 10)  # crop k is all k + 1
    canvas = layer.paste(maps, 40, 40)
    assert canvas.shape == (2, 40, 40)
    for r, (top, left) in enumerate(layer.corners(40, 40)):
        assert canvas[1, top + 5, left + 5] >= 5 + r  # image 1's crops hold 5..8 (overlaps: the larger)
    outside = np.ones((40, 40), bool)
    for top, left in layer.corners(40, 40):
        outside[top : top + 10, left : left + 10] = False
    assert np.all(canvas[:, outside] == 0)


def test_region_targets_follow_the_class_order():
    regions = tf.constant([[1, 0, 0, 1], [0, 0, 0, 0], [-1] * 4])
    # fake is class 1: an edited region is 1, an unedited one 0, an unknown one the image's label
    fake_one = region_class_targets(tf.constant([1, 0, 1]), regions)
    assert np.asarray(fake_one).tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    # fake is class 0 ("fake" < "real"): the same regions, the other way round
    fake_zero = region_class_targets(tf.constant([0, 1, 0]), regions)
    assert np.asarray(fake_zero).tolist() == [[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_the_model_scores_an_image_by_its_mean_region_probability_and_trains_on_region_targets():
    config = ModelConfig(name="fast_resnet", filters=(8, 8, 8), region_crops=24)
    model = build_model(config, (64, 64, 3), 2)
    assert isinstance(model, RegionCropModel)
    x = images(3, 64, seed=2)
    image_prob, region_probs = (np.asarray(t) for t in model.network(x, training=False))
    assert region_probs.shape == (3, 4)
    np.testing.assert_allclose(image_prob[:, 0], region_probs.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(x)), image_prob, atol=1e-6)

    # One step's loss is the compiled loss over the 12 regions' own targets, not the 3 labels.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.BinaryCrossentropy())
    labels = np.array([1, 0, 1])
    regions = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [-1, -1, -1, -1]], np.float32)
    crops_layer = model.network.get_layer("region_crops")
    crops_layer.jitter, crops_layer.flip = 0, False  # so training mode crops what inference does
    trained = model.network(x, training=True)[1].numpy().reshape(-1)
    expected = np.asarray(
        keras.losses.binary_crossentropy(
            np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1.0])[:, None], trained[:, None]
        )
    ).mean()
    history = model.fit(x, (labels, regions), batch_size=3, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(float(expected), rel=1e-4)


def test_region_crop_options_that_cannot_work_are_errors(tmp_path):
    from tfpipeline.workflow import run_training

    with pytest.raises(UserError, match="--region-crops 80 must be between 16 and the image side"):
        build_model(ModelConfig(name="fast_resnet", region_crops=80), (64, 64, 3), 2)
    with pytest.raises(UserError, match="two-class"):
        build_model(ModelConfig(name="fast_resnet", region_crops=16), (64, 64, 3), 3)
    with pytest.raises(UserError, match="drop --aux-regions"):
        build_model(ModelConfig(name="fast_resnet", region_crops=16, aux_regions=0.1), (64, 64, 3), 2)
    with pytest.raises(UserError, match="--region-crops is a crop side"):
        ModelConfig(name="fast_resnet", region_crops=-1)
    data = DataConfig(data="demo", image_size=(32, 32))
    cases = {
        "--region-crops is available for fast_resnet": (ModelConfig(name="small_cnn", region_crops=16), data),
        "a whole-image --flip would swap": (
            ModelConfig(name="fast_resnet", region_crops=16),
            DataConfig(data="demo", image_size=(32, 32), augment=AugmentConfig(flip=True)),
        ),
    }
    for message, (model, data_config) in cases.items():
        with pytest.raises(UserError, match=message):
            run_training(
                RunConfig(data=data_config, model=model, train=TrainConfig(run_dir=str(tmp_path))), verbose=0
            )


def test_a_region_crop_run_trains_evaluates_explains_and_exports(tmp_path):
    import json

    import pandas as pd
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from tfpipeline.cli import main
    from tfpipeline.data.decode import file_decoder
    from tfpipeline.data.regions import parse_region_name
    from tfpipeline.decision import best_accuracy_threshold
    from tfpipeline.evaluation.predict import load_run_predictor, predict_paths
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.export.loader import load_export

    rng = np.random.default_rng(3)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        for cls in ("fake", "real"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                name = f"easy_{i}_10{i % 2}1.jpg" if cls == "fake" else f"real_{i}.jpg"
                Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(folder / name)
    argv = ["train", "--data", str(tmp_path / "data"), "--model", "fast_resnet", "--filters", "8,8,8"]
    argv += ["--image-size", "48", "--region-crops", "24", "--batch-size", "4", "--epochs", "2"]
    assert main([*argv, "--run-dir", str(tmp_path / "runs")]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert "region_crops: 24" in (run / "config.yaml").read_text()

    evaluate = ["evaluate", str(run), "--gradcam", "2", "--top-losses", "0"]
    assert main([*evaluate, "--adversarial", "fgsm", "--eps", "0,2/255"]) == 0
    metrics = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert set(metrics["region_head"]) <= set(REGIONS) and metrics["region_head"]  # the crops' own AUCs
    assert (run / "evaluation" / "test" / "gradcam.png").is_file()
    clean, attacked = metrics["adversarial"]  # gradients reach the image through the crops
    assert (
        clean["accuracy"] == pytest.approx(metrics["accuracy"]) and attacked["accuracy"] <= clean["accuracy"]
    )

    plain = load_run_model(open_run(run))
    assert plain.output_shape == (None, 1)
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    files = sorted((tmp_path / "data" / "test" / "fake").iterdir())[:2]
    decode = file_decoder(3, (48, 48), DataConfig(data="x").resize, DataConfig(data="x").interpolation)
    pixels = np.stack([np.asarray(decode(str(f))) for f in files]).astype(np.float32) / 255.0
    served = load_export(tmp_path / "export" / "fast_resnet").predict_bytes([f.read_bytes() for f in files])
    np.testing.assert_allclose(served[:, 1], np.asarray(plain.predict(pixels, verbose=0))[:, 0], atol=1e-5)

    # The per-region report scores each crop's probability of "edited". The sigmoid scores class 1
    # ("real") by default, so that is 1 - the crop's output; with --positive-class fake, the output.
    files = sorted((tmp_path / "data" / "test").rglob("*.jpg"))
    x = np.stack([np.asarray(decode(str(f))) for f in files]).astype(np.float32) / 255.0
    truth = np.array([parse_region_name(f).edited if f.parent.name == "fake" else (0,) * 4 for f in files])
    fake_run_dir = tmp_path / "runs-positive-fake"
    # fake_faces' scoring: the test-time flip and the best-accuracy threshold.
    scoring = ["--tta", "flip", "--threshold", "accuracy"]
    assert (
        main([*argv, "--epochs", "1", "--positive-class", "fake", *scoring, "--run-dir", str(fake_run_dir)])
        == 0
    )
    fake_run = next(fake_run_dir.iterdir())
    rule = json.loads((fake_run / "metrics.json").read_text())["threshold"]
    val = pd.read_csv(fake_run / "predictions_val.csv")
    assert rule["policy"] == "accuracy" and rule["value"] == pytest.approx(
        best_accuracy_threshold((val["label"] == "fake").to_numpy(), val["p_fake"].to_numpy())
    )
    assert main(["export", str(fake_run), "--out", str(tmp_path / "export-fake")]) == 0
    fake_plain = load_run_model(open_run(fake_run))
    flipped = np.asarray(fake_plain.predict(x[:, :, ::-1], verbose=0))[:, 0]
    expected = (np.asarray(fake_plain.predict(x, verbose=0))[:, 0] + flipped) / 2  # p(fake): class 0
    served = load_export(tmp_path / "export-fake" / "fast_resnet").serve_bytes(
        [f.read_bytes() for f in files]
    )
    np.testing.assert_allclose(served["probabilities"][:, 0], expected, atol=1e-5)
    # Its out-of-domain detector taps the crops' feature maps, and the export scores as predict does.
    stored = json.loads((fake_run / "ood" / "ood.json").read_text())
    assert stored["layout"]["taps"] == ["stem_act", "group1_act2", "group2_act2", "group3_act2"]
    found = predict_paths(load_run_predictor(fake_run), files, batch_size=3)
    np.testing.assert_allclose(served["ood_score"], found.ood_scores, rtol=1e-5, atol=EXPORT_TOLERANCE)
    np.testing.assert_array_equal(served["in_domain"], found.in_domain)
    assert main(["evaluate", str(fake_run), "--gradcam", "0", "--top-losses", "0"]) == 0
    fake_metrics = json.loads((fake_run / "evaluation" / "test" / "metrics.json").read_text())
    for folder, report, flip in ((run, metrics, True), (fake_run, fake_metrics, False)):
        full = keras.models.load_model(open_run(folder).run.model_checkpoint(), compile=False)
        output = np.asarray(as_float32(full.network)(x, training=False)[1])  # float32, as evaluate
        edited = 1.0 - output if flip else output
        for r, region in enumerate(REGIONS):
            if region in report["region_head"]:
                expected = roc_auc_score(truth[:, r], edited[:, r])
                assert report["region_head"][region]["auc"] == pytest.approx(expected, abs=1e-4)


def test_out_of_domain_views_read_one_row_per_image_and_energy_is_refused():
    from tfpipeline.ood.views import LENGTH_EPSILON, head_linear, view_model

    config = ModelConfig(name="fast_resnet", filters=(8, 8, 8), region_crops=16, stem="plain")
    model = main_model(build_model(config, (40, 40, 3), 2))
    view, layout = view_model(model, config)
    x = images(3, 40, seed=6)
    output, embedding, head = layout.split(np.asarray(view(x)))
    np.testing.assert_allclose(output, np.asarray(model(x)), atol=1e-6)
    np.testing.assert_allclose(head.mean(axis=1, keepdims=True), output, atol=1e-6)  # the 4 regions
    # The taps' channel means are taken over every position of the image's four crops (a crop's
    # rows must not be read as images of their own), then the four crops' features side by side.
    assert layout.embedding_layer == "region_features"
    assert layout.taps == ("stem_act", "group1_act2", "group2_act2", "group3_act2")
    maps = keras.Model(model.inputs[0], [model.get_layer(name).output for name in layout.taps])(x)
    expected = [np.asarray(m).reshape(3, -1, m.shape[-1]).mean(axis=1) for m in maps]  # image-major
    expected.append(np.asarray(keras.Model(model.inputs[0], model.get_layer("region_features").output)(x)))
    widths = [24, 8, 8, 8, 4 * 8]  # stem (2 x 3 channels x 2 x 2), the groups, the 4 crops' pools
    assert embedding.shape == (3, sum(widths) + len(widths))
    blocks = np.split(embedding[:, : sum(widths)], np.cumsum(widths)[:-1], axis=1)
    for block, means in zip(blocks, expected, strict=True):
        length = np.linalg.norm(means, axis=1, keepdims=True)
        np.testing.assert_allclose(block, means / (length + LENGTH_EPSILON), atol=1e-5)
        assert np.all(length > 1e-3)  # a live block, so the comparison means something
    lengths = np.concatenate([np.linalg.norm(e, axis=1, keepdims=True) for e in expected], axis=1)
    np.testing.assert_allclose(
        embedding[:, sum(widths) :], np.log(lengths + LENGTH_EPSILON), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(UserError, match="--ood energy needs the model's logits"):
        head_linear(model, layout)
