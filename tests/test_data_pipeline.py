"""tf.data pipelines: decoding, resizing, scaling, caching, shuffling, augmentation, labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpipeline.config import AugmentConfig, DataConfig
from tfpipeline.data import build_dataset, resolve_source
from tfpipeline.data.decode import (
    decode_image,
    encoded_to_pixels,
    file_decoder,
    jpeg_ratio_index,
    resize_image,
)
from tfpipeline.data.pipeline import decoded_images
from tfpipeline.data.split import Split

SMALL = (24, 24)


def config_for(data, **options) -> DataConfig:
    options.setdefault("image_size", SMALL)
    options.setdefault("batch_size", 4)
    return DataConfig(data=str(data), **options)


def train_split(folder, **options):
    config = config_for(folder, **options)
    return resolve_source(config).splits["train"], config


def batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(dataset.as_numpy_iterator())


def one_file_split(path) -> Split:
    return Split(labels=np.array([0], np.int32), paths=(str(path),))


def decode_one(path, image_size=(20, 20), resize="stretch", color_mode="rgb") -> np.ndarray:
    """One file through the pipeline's decode + resize, eagerly (no tf.data tracing: fast)."""
    channels = 1 if color_mode == "grayscale" else 3
    image = decode_image(tf.io.read_file(str(path)), channels, image_size)
    return resize_image(image, image_size, resize, "bilinear").numpy()


def test_decode_one_matches_the_dataset(tmp_path, add_bad_file):
    path = add_bad_file(tmp_path, "cmyk")
    config = DataConfig(image_size=(20, 20), color_mode="grayscale", resize="pad")
    [(image, _)] = list(decoded_images(one_file_split(path), config).as_numpy_iterator())
    np.testing.assert_array_equal(image, decode_one(path, resize="pad", color_mode="grayscale"))


# --------------------------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize(
    ("scaling", "low", "high"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0), ("raw", 0.0, 255.0)]
)
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_shapes_and_value_ranges(image_folder, scaling, low, high, color_mode):
    split, config = train_split(image_folder, color_mode=color_mode)
    dataset = build_dataset(split, config, scaling=scaling, training=False, num_classes=2)
    images = np.concatenate([x for x, _ in batches(dataset)])
    channels = 1 if color_mode == "grayscale" else 3
    assert images.shape == (16, *SMALL, channels) and images.dtype == np.float32
    assert images.min() >= low and images.max() <= high
    # Exactly the documented map from 0..255 pixels (not, say, [0, 1] when raw was asked for).
    pixels = np.stack([x for x, _ in decoded_images(split, config).as_numpy_iterator()]).astype(np.float32)
    np.testing.assert_allclose(images, low + pixels * (high - low) / 255.0, atol=1e-5)


def test_grayscale_is_luminance_of_rgb(image_folder):
    split, config = train_split(image_folder)
    rgb = np.stack([x for x, _ in decoded_images(split, config).as_numpy_iterator()]).astype(float)
    gray = np.stack(
        [x for x, _ in decoded_images(split, replace(config, color_mode="grayscale")).as_numpy_iterator()]
    ).astype(float)
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0] - luminance).mean() < 3


@pytest.mark.parametrize("label_mode", ["binary", "categorical", "int"])
def test_label_shapes(image_folder, label_mode):
    split, config = train_split(image_folder)
    dataset = build_dataset(
        split, config, scaling="unit", training=False, num_classes=2, label_mode=label_mode
    )
    _, labels = batches(dataset)[0]
    expected = {"binary": (4, 1), "categorical": (4, 2), "int": (4,)}[label_mode]
    assert labels.shape == expected
    flat = labels.argmax(-1) if label_mode == "categorical" else labels.ravel()
    assert flat.tolist() == split.labels[:4].tolist()


def test_bad_label_mode(image_folder):
    split, config = train_split(image_folder)
    with pytest.raises(ValueError, match="label_mode"):
        build_dataset(split, config, scaling="unit", training=False, num_classes=2, label_mode="onehot")


def test_in_memory_grayscale_images_become_rgb():
    config = DataConfig(data="digits", image_size=(16, 16), batch_size=8)
    split = resolve_source(config).splits["val"]
    images, labels = batches(build_dataset(split, config, scaling="unit", training=False, num_classes=10))[0]
    assert images.shape == (8, 16, 16, 3) and labels.shape == (8,)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", ["cmyk", "rgba", "16-bit", "16-bit-rgb", "palette", "animated"])
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_unusual_files_decode(tmp_path, add_bad_file, kind, color_mode):
    image = decode_one(add_bad_file(tmp_path, kind), color_mode=color_mode)
    assert image.shape == (20, 20, 1 if color_mode == "grayscale" else 3)
    if kind == "animated":
        assert abs(float(image.mean()) - 20) < 3  # the first frame
    if kind == "16-bit-rgb":
        assert abs(float(image.mean()) - 40000 / 257) < 2  # 16 -> 8 bits keeps brightness


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "PNG", "JPEG"])
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_formats_decode_in_both_colour_modes(tmp_path, fmt, color_mode):
    gray = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    path = tmp_path / f"image.{fmt.lower()}"
    Image.fromarray(np.stack([gray] * 3, -1)).save(path, format=fmt)
    image = decode_one(path, color_mode=color_mode, image_size=(30, 40)).astype(float)
    assert image.shape == (30, 40, 1 if color_mode == "grayscale" else 3)
    assert np.abs(image[..., 0] - gray).mean() < 4


def test_jpeg_ratio_index():
    def index(source, target):
        return int(jpeg_ratio_index(tf.constant(source, tf.int32), target))

    assert index((256, 256), (64, 64)) == 2  # 1/4 scale
    assert index((127, 256), (64, 64)) == 0  # height is less than twice the target
    assert index((128, 128), (64, 64)) == 1
    assert index((4000, 3000), (64, 64)) == 3
    assert index((32, 32), (64, 64)) == 0  # smaller than the target: full scale


def test_reduced_scale_jpeg_matches_full_decode(tmp_path):
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    smooth = np.stack([x, y, 255 - (x + y) / 2], -1)
    smooth = 128 + 100 * np.sin(smooth / 60.0)
    path = tmp_path / "smooth.jpg"
    Image.fromarray(smooth.astype(np.uint8)).save(path, quality=95)
    contents = tf.io.read_file(str(path))
    reduced = decode_image(contents, 3, (64, 64))
    assert tuple(reduced.shape) == (64, 64, 3)  # decoded at 1/4 scale, not 256x256
    full = decode_image(contents, 3, None)
    assert tuple(full.shape) == (256, 256, 3)
    a = resize_image(reduced, (64, 64), "stretch", "bilinear").numpy().astype(float)
    b = resize_image(full, (64, 64), "stretch", "area").numpy().astype(float)
    assert np.abs(a - b).mean() < 6


# --------------------------------------------------------------------------- resizing


def non_square_image(tmp_path):
    """80 wide x 40 high: a white 40x40 centre square between black side bands."""
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("method", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("size", [(20, 20), (16, 32), (33, 17)])
def test_resize_methods_give_target_size(tmp_path, method, size):
    image = decode_one(non_square_image(tmp_path), resize=method, image_size=size)
    assert image.shape == (*size, 3)


def test_crop_keeps_aspect_ratio(tmp_path):
    path = non_square_image(tmp_path)
    cropped = decode_one(path, resize="crop")
    assert cropped.min() == 255  # the centred square window is all white: nothing squeezed
    stretched = decode_one(path, resize="stretch")
    assert stretched[:, :3].max() == 0 and stretched[:, 8:12].min() == 255
    padded = decode_one(path, resize="pad")
    assert padded[:4].max() == 0 and padded[-4:].max() == 0  # letterbox bars
    assert padded[6:14, 7:13].min() == 255


# --------------------------------------------------------------------------- order and caching


def test_same_seed_same_batches_and_other_seed_other_order(image_folder):
    def first_epoch(seed):
        split, config = train_split(image_folder, seed=seed)
        return batches(build_dataset(split, config, scaling="unit", training=True, num_classes=2))

    a, b, c = first_epoch(5), first_epoch(5), first_epoch(6)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_training_reshuffles_each_epoch_and_eval_keeps_order(image_folder):
    split, config = train_split(image_folder, batch_size=16)
    train = build_dataset(split, config, scaling="raw", training=True, num_classes=2)
    epoch1, epoch2 = batches(train)[0][0], batches(train)[0][0]
    assert not np.array_equal(epoch1, epoch2)
    np.testing.assert_array_equal(np.sort(epoch1.ravel()), np.sort(epoch2.ravel()))
    val = build_dataset(split, config, scaling="raw", training=False, num_classes=2)
    expected = np.stack([x for x, _ in decoded_images(split, config).as_numpy_iterator()])
    np.testing.assert_array_equal(batches(val)[0][0], expected)


@pytest.mark.parametrize("cache", ["memory", "none", "file", "folder"])
def test_cache_modes_give_identical_batches(image_folder, tmp_path, cache):
    if cache == "file":
        cache = str(tmp_path / "cache" / "faces")  # a prefix in a folder that does not exist yet
    elif cache == "folder":
        (tmp_path / "cache").mkdir()
        cache = str(tmp_path / "cache")  # an existing folder: cache files go inside it
    split, config = train_split(image_folder)
    reference = batches(build_dataset(split, config, scaling="unit", training=False, num_classes=2))
    cached_config = replace(config, cache=cache)
    dataset = build_dataset(split, cached_config, scaling="unit", training=False, num_classes=2)
    for _ in range(2):  # the second pass reads the cache
        for (x, y), (rx, ry) in zip(batches(dataset), reference, strict=True):
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)
    if cache not in ("memory", "none"):
        assert list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("epochs", [None, (1, 3)])
def test_in_memory_batches_equal_streamed_batches_in_training_order(image_folder, epochs):
    """Batches gathered from in-memory pixels (the pixel cache) are the ones a streamed
    pipeline yields with the same seed: same images, labels and order, epoch after epoch."""
    split, config = train_split(image_folder, batch_size=3, seed=11)
    common = {"scaling": "raw", "training": True, "num_classes": 2, "epochs": epochs}
    gathered = build_dataset(split, config, **common)
    streamed = build_dataset(split, replace(config, cache="none"), **common)
    # Gathering skips tf.data's static rewrites (they would serialise the captured pixels each
    # time an iterator is made); the batches below show it changes nothing they hold.
    assert gathered.options().experimental_optimization.apply_default_optimizations is False
    assert streamed.options().experimental_optimization.apply_default_optimizations is not False
    passes = 1 if epochs else 2  # without `epochs` every pass is a new epoch
    for _ in range(passes):
        got, want = batches(gathered), batches(streamed)
        assert len(got) == len(want) == (2 if epochs else 1) * -(-len(split) // 3)
        for (x, y), (wx, wy) in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)


def test_file_cache_is_not_reused_for_other_settings(image_folder, tmp_path):
    split, config = train_split(image_folder, cache=str(tmp_path / "c"))
    first = batches(build_dataset(split, config, scaling="unit", training=False, num_classes=2))
    assert first[0][0].shape[1:3] == SMALL
    bigger = replace(config, image_size=(32, 32))
    second = batches(build_dataset(split, bigger, scaling="unit", training=False, num_classes=2))
    assert second[0][0].shape[1:3] == (32, 32)


# --------------------------------------------------------------------------- augmentation


def test_augmentation_changes_train_batches_only(image_folder):
    split, plain = train_split(image_folder, batch_size=16)
    augmented = replace(plain, augment=AugmentConfig(flip=True, rotation=0.2, zoom=0.2, brightness=0.3))

    def images(config, training):
        dataset = build_dataset(split, config, scaling="raw", training=training, num_classes=2)
        return batches(dataset)[0]

    (x_plain, y_plain), (x_aug, y_aug) = images(plain, True), images(augmented, True)
    np.testing.assert_array_equal(y_plain, y_aug)  # same seed: same order
    assert np.abs(x_plain - x_aug).mean() > 5
    assert x_aug.min() >= 0 and x_aug.max() <= 255
    np.testing.assert_array_equal(images(plain, False)[0], images(augmented, False)[0])


def test_augmentation_is_seeded_and_differs_between_epochs(image_folder):
    split, config = train_split(image_folder, batch_size=16, augment=AugmentConfig(rotation=0.3))

    def dataset():
        return build_dataset(split, config, scaling="raw", training=True, num_classes=2)

    first = dataset()
    epoch1, epoch2 = batches(first)[0][0], batches(first)[0][0]
    np.testing.assert_allclose(batches(dataset())[0][0], epoch1, atol=1e-3)
    # Another epoch: new order *and* new transforms, so the multiset of pixels changes too.
    assert not np.allclose(np.sort(epoch1.ravel()), np.sort(epoch2.ravel()), atol=1e-3)


def test_augment_config_validation():
    from tfpipeline.errors import UserError

    assert not AugmentConfig().enabled
    assert AugmentConfig(flip=True).enabled
    with pytest.raises(UserError, match="rotation"):
        AugmentConfig(rotation=1.5)


def test_pixels_are_shared_with_tensorflow_when_aligned_and_copied_otherwise():
    import tensorflow as tf

    from tfpipeline.data.tensor_memory import aligned_empty, pixels_tensor

    aligned = aligned_empty((4, 6, 6, 3))
    aligned[:] = np.arange(4, dtype=np.uint8)[:, None, None, None]
    shared = pixels_tensor(aligned)
    aligned[2] = 77  # visible through the tensor: no copy was made
    np.testing.assert_array_equal(tf.gather(shared, [2, 0]).numpy(), aligned[[2, 0]])
    # Unaligned (TensorFlow would abort the process on them), read-only or strided arrays are
    # copied, and gathering from the copy is safe.
    buffer = np.zeros(4 * 6 * 6 * 3 + 1, np.uint8)
    start = 1 if buffer.ctypes.data % 2 == 0 else 0
    unaligned = buffer[start : start + 4 * 6 * 6 * 3].reshape(4, 6, 6, 3)
    read_only = aligned.copy()
    read_only.flags.writeable = False
    for array in (unaligned, read_only, aligned[:, ::2]):
        tensor = pixels_tensor(array)
        np.testing.assert_array_equal(tf.gather(tensor, [3, 1]).numpy(), array[[3, 1]])
        before = array[1].copy()
        if array.flags.writeable:
            array[1] = 5
        np.testing.assert_array_equal(tensor[1].numpy(), before)  # a copy: untouched by writes


def test_a_callers_images_are_copied_so_later_writes_leave_the_batches_alone():
    from tfpipeline.data.tensor_memory import aligned_empty

    images = aligned_empty((6, 8, 8, 3))  # aligned on purpose: it could be shared, and must not be
    images[:] = 10
    split = Split(labels=np.arange(6, dtype=np.int32) % 2, images=images)
    config = DataConfig(data="in-memory", image_size=(8, 8), batch_size=6)
    dataset = build_dataset(split, config, scaling="raw", training=False, num_classes=2)
    images[:] = 200
    batch, _ = next(iter(dataset))
    assert float(np.max(batch)) == 10.0


def test_the_per_process_file_decoder_is_keyed_by_every_setting(image_folder):
    path = str(next(image_folder.glob("train/blue/*")))
    settings = (3, (24, 40), "crop", "bilinear")
    assert file_decoder(*settings) is file_decoder(*settings)  # traced once, reused
    for changed in [(1, (24, 40), "crop", "bilinear"), (3, (24, 40), "pad", "bilinear"),
                    (3, (24, 40), "crop", "nearest"), (3, (40, 24), "crop", "bilinear")]:  # fmt: skip
        decoder = file_decoder(*changed)
        assert decoder is not file_decoder(*settings)
        expected = encoded_to_pixels(tf.io.read_file(path), *changed)
        np.testing.assert_array_equal(decoder(tf.constant(path)).numpy(), expected.numpy())


def test_single_decoding_passes_run_without_runtime_autotuning(image_folder, monkeypatch):
    """The data check's pass (filling the pixel cache) and a first run's fill decode every file
    once; with tf.data's autotuning on, destroying such a pass's iterator could wait seconds."""
    from tfpipeline.data import decode, pipeline
    from tfpipeline.data.check import check_files

    given: list[tf.data.Options] = []
    real = decode.one_pass_options

    def recorded():
        options = real()
        given.append(options)
        return options

    monkeypatch.setattr(decode, "one_pass_options", recorded)  # what the check imports
    monkeypatch.setattr(pipeline, "one_pass_options", recorded)
    config = DataConfig(data=str(image_folder), image_size=(16, 16))
    train = resolve_source(config).splits["train"]
    paths = list(train.paths)
    report = check_files(paths, channels=3, target_hw=(16, 16), fill=pipeline.decode_settings(config))
    assert not report.problems and len(given) == 1
    batches = list(pipeline.decoded_file_batches(paths, config, batch_size=5))
    assert len(given) == 2 and all(options.autotune.enabled is False for options in given)
    # The fill's pass still decodes every file, in order, as the training decoder does.
    expected = np.stack([image.numpy() for image, _ in decoded_images(train, config)])
    np.testing.assert_array_equal(np.concatenate(batches), expected)
