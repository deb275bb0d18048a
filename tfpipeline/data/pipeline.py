"""Build tf.data pipelines from a split: decode -> resize -> cache -> shuffle -> batch ->
augment -> scale -> prefetch.

Ordering rationale: everything deterministic and expensive (file read, decode, resize) happens
before the cache, and the cache holds uint8 pixels (a quarter of float32's memory). Shuffling
after the cache reshuffles every epoch; augmentation after batching runs vectorised on the batch
and after the cache so every epoch sees new random transforms.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.config import DataConfig
from tfpipeline.data import cache_fill, pixel_cache
from tfpipeline.data.augment import RandomWindow, make_augmenter
from tfpipeline.data.blend import make_blender
from tfpipeline.data.decode import (
    file_decoder,
    match_channels,
    one_pass_options,
    resize_image,
    scale_pixels,
)
from tfpipeline.data.pixel_cache import DecodeSettings
from tfpipeline.data.split import Split
from tfpipeline.data.tensor_memory import aligned_empty, aligned_from_batches, pixels_tensor
from tfpipeline.errors import UserError

log = logging.getLogger(__name__)
LABEL_MODES = ("int", "binary", "categorical")


def decoded_images(split: Split, config: DataConfig) -> tf.data.Dataset:
    """(uint8 image [H, W, C] at `config.image_size`, int32 label) pairs, in split order."""
    size, channels = tuple(config.image_size), config.channels

    # The decode functions are traced as written: they branch on Python values only (tf.cond and
    # tf.switch_case inside), and autograph's rewrite of them took ~2 s of every new process.
    @tf.autograph.experimental.do_not_convert
    def finish(image, label):
        image = match_channels(image, channels)
        return resize_image(image, size, config.resize, config.interpolation), label

    if split.from_files:
        decode_file = file_decoder(channels, size, config.resize, config.interpolation)

        @tf.autograph.experimental.do_not_convert
        def load(path, label):
            return decode_file(path), label

        source = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels))
        # deterministic=True keeps file order, which fixes what the seeded shuffle sees.
        return source.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if split.images is not None:
        source = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    else:
        source = split.dataset
    return source.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def decode_settings(config: DataConfig) -> DecodeSettings:
    return DecodeSettings(tuple(config.image_size), config.channels, config.resize, config.interpolation)


def decoded_file_batches(paths: list[str], config: DataConfig, batch_size: int = 256) -> Iterator[np.ndarray]:
    """uint8 [<=batch_size, H, W, C] batches of image files in order, decoded in parallel by the
    training decoder (the pixel cache streams them to disk as they come)."""
    decode_file = file_decoder(config.channels, tuple(config.image_size), config.resize, config.interpolation)
    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(decode_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(one_pass_options())
    )
    for batch in dataset:
        yield batch.numpy()


def decode_files(paths: list[str], config: DataConfig) -> np.ndarray:
    """uint8 [N, H, W, C] of image files, decoded in parallel by the training decoder, in an
    array aligned for TensorFlow (:func:`~tfpipeline.data.tensor_memory.aligned_from_batches`)."""
    shape = (len(paths), *config.image_size, config.channels)
    if not paths:
        return aligned_empty(shape)
    return aligned_from_batches(decoded_file_batches(paths, config), shape)


def pixel_array(split: Split, config: DataConfig) -> np.ndarray | None:
    """The split's uint8 pixels [N, H, W, C] at the config's size, when they sit in memory.

    Image files with the default `cache="memory"` come from the persistent pixel cache
    (:mod:`~tfpipeline.data.pixel_cache`): decoded once, on the first run that needs them, and
    read back by every later run, trial and fold. In-memory images (embedded data) are returned
    as they are when already at the size and channels, resized once otherwise.

    Returns:
        The array, or None for splits that stream (TFDS datasets, other `--cache` settings,
        or the pixel cache switched off): :func:`decoded_images` serves those.
    """
    if split.from_files and config.cache == "memory" and pixel_cache.enabled():
        pixels, counts = cache_fill.cached_pixels(
            list(split.paths), decode_settings(config), lambda paths: decoded_file_batches(paths, config)
        )
        if counts["decoded"]:
            log.info(
                "pixel cache: decoded %d image(s), read %d from the cache", counts["decoded"], counts["hits"]
            )
        return pixels
    if split.images is not None:
        if split.images.dtype == np.uint8 and split.images.shape[1:] == (*config.image_size, config.channels):
            return split.images
        return np.concatenate(
            [np.zeros((0, *config.image_size, config.channels), np.uint8)]
            + [images for images, _ in decoded_images(split, config).batch(256).as_numpy_iterator()]
        )
    return None


def _shuffled_batches(
    dataset: tf.data.Dataset,
    size: int,
    *,
    training: bool,
    epochs: tuple[int, int] | None,
    batch_size: int,
    seed: int,
) -> tf.data.Dataset:
    """Batches of `dataset` (images, or indices of in-memory images) in training or file order."""
    if training and epochs is not None:
        # One seeded shuffle per epoch, keyed by the epoch number, so a resumed run sees exactly
        # the batches an uninterrupted run would. All epochs share whatever cache sits below.
        return tf.data.Dataset.range(*epochs).flat_map(
            lambda epoch: dataset.shuffle(size, seed=seed * 100_003 + epoch).batch(batch_size)
        )
    if training:
        return dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return dataset.batch(batch_size)


def _gathered_batches(
    pixels: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    batch_order: tf.data.Dataset,
    *,
    share: bool,
    finish: Callable,
) -> tf.data.Dataset:
    """Batches gathered by index from in-memory pixels, passed through `finish` (uint8 images,
    labels) -> model inputs in the same map function: the one copy an epoch needs.

    Shuffling indices instead of images keeps the shuffle buffer tiny and copies each image
    once per epoch (straight into its batch), where a shuffle of the images themselves copies
    every image into and out of the buffer. A seeded shuffle draws the same permutation either
    way, so runs see the same batches as before. `share`: the pixels are the pipeline's own (the
    pixel cache's), so TensorFlow may use their memory in place; a caller's array is copied, so
    that writing to it later cannot change the batches.
    """
    images = pixels_tensor(pixels) if share else tf.constant(pixels)
    label_tensor = tf.constant(labels)
    target_tensor = None if targets is None else tf.constant(targets)

    # Plain TF ops (and `finish`, traced as written): nothing for autograph to rewrite. One map,
    # not a gather map then a conversion map: a new process's cached pass over 1,831 images at 224
    # took 0.19 s instead of 0.25 s (medians of 8 alternating, AMD Zen 4), one function fewer to
    # trace and one uint8 batch fewer in flight.
    @tf.autograph.experimental.do_not_convert
    def gather(indices):
        batch_labels = tf.gather(label_tensor, indices)
        if target_tensor is not None:
            batch_labels = (batch_labels, tf.gather(target_tensor, indices))
        return finish(tf.gather(images, indices), batch_labels)

    return batch_order.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def cached_stream(split: Split, config: DataConfig, cache_name: str) -> tf.data.Dataset:
    """:func:`decoded_images` behind the tf.data cache `config.cache` asks for (for splits that
    :func:`pixel_array` cannot hold): in memory, in files named by :func:`cache_path`, or none."""
    dataset = decoded_images(split, config)
    if config.cache == "memory":
        return dataset.cache()
    if config.cache != "none":
        return dataset.cache(cache_path(split, config, cache_name))
    return dataset


def cache_path(split: Split, config: DataConfig, cache_name: str) -> str:
    """On-disk cache prefix `<--cache>-<cache_name>-<key>`, creating its folder.

    The key hashes the examples and every setting that changes the cached pixels, so a cache
    written for another image size, colour mode or file list is never read back by mistake
    (tf.data would silently return the stale images, or fail on their shape).
    """
    digest = hashlib.sha1(
        repr(
            (config.data, tuple(config.image_size), config.color_mode, config.resize, config.interpolation)
        ).encode()
    )
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    digest.update("\0".join(split.paths).encode())
    if split.images is not None:
        digest.update(np.ascontiguousarray(split.images).tobytes())
    prefix = Path(config.cache).expanduser()
    if prefix.is_dir() or config.cache.endswith(("/", os.sep)):  # a folder: cache files go inside
        prefix = prefix / "tfdata"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}-{cache_name}-{digest.hexdigest()[:12]}"


def build_dataset(
    split: Split,
    config: DataConfig,
    *,
    scaling: str,
    training: bool,
    num_classes: int,
    label_mode: str = "int",
    cache_name: str = "split",
    epochs: tuple[int, int] | None = None,
    class_names: tuple[str, ...] = (),
    region_targets: bool = False,
) -> tf.data.Dataset:
    """A batched dataset of (float32 images, labels) ready for `model.fit`.

    Args:
        split: the examples.
        config: decode, resize, cache, batch and augmentation settings.
        scaling: resolved pixel range (`unit`, `symmetric` or `raw`; not `model`).
        training: shuffle (seeded, reshuffled each epoch) and augment; otherwise keep order.
        num_classes: needed for one-hot labels.
        label_mode: `int` (class index), `binary` (float32 [N, 1]) or `categorical` (one-hot).
        cache_name: distinguishes on-disk cache files of different splits.
        epochs: for training, `(first, stop)`: one dataset streaming epochs first..stop-1, each
            shuffled with a seed derived from its number (fit it with `steps_per_epoch`).
            Makes resumed runs reproduce uninterrupted ones.
        class_names: the class order (needed by `--synth-fakes` to find the real/fake classes).
        region_targets: labels become `(label, regions)` with the edited-region targets of
            :func:`region_targets_of` (an auxiliary region head's).

    Returns:
        A tf.data.Dataset; the same seed yields the same images in the same batches. The
        augmentation's random draws repeat only under op determinism (`--deterministic`):
        otherwise parallel map calls take them in a varying order.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}")
    batching = {"training": training, "epochs": epochs, "batch_size": config.batch_size, "seed": config.seed}
    targets = region_targets_of(split, class_names, config.augment.fake_class) if region_targets else None
    augmenter = make_augmenter(config.augment, config.seed) if training else None
    blender = make_blender(config.augment, tuple(class_names), config.seed) if training else None
    window = RandomWindow(config.crop, seed=config.seed + 8) if training and config.crop else None

    # Traced as written: every branch tests a Python value fixed here, and autograph's rewrite of
    # this function's source (and of the layers it calls) was most of a cached run's start-up.
    @tf.autograph.experimental.do_not_convert
    def to_model_inputs(images, labels):
        images = tf.cast(images, tf.float32)
        targets = None
        if region_targets:
            labels, targets = labels
        if blender is not None:  # forgeries first, so they are augmented like every image
            before = labels
            images, labels, made = blender(images, labels)
            if targets is not None:
                targets = tf.where(tf.not_equal(before, labels)[:, None], made, targets)
        if augmenter is not None:
            images = augmenter(images, training=True)
        if window is not None:
            images = window(images)
        encoded = encode_labels(labels, label_mode, num_classes)
        return scale_pixels(images, scaling), encoded if targets is None else (encoded, targets)

    pixels = pixel_array(split, config)
    if pixels is not None:
        order = _shuffled_batches(tf.data.Dataset.range(len(split)), len(split), **batching)
        dataset = _gathered_batches(
            pixels, split.labels, targets, order, share=split.from_files, finish=to_model_inputs
        )
    else:
        dataset = cached_stream(split, config, cache_name)
        if targets is not None:
            dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(targets))).map(
                lambda pair, t: (pair[0], (pair[1], t))
            )
        dataset = _shuffled_batches(dataset, len(split), **batching)
        dataset = dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if pixels is not None:
        dataset = dataset.with_options(in_memory_options())
    return dataset


def in_memory_options() -> tf.data.Options:
    """tf.data options for a pipeline that gathers batches from in-memory pixels.

    No static graph rewrites: any of them serialises the dataset's graph, and with it the pixel
    tensor its gather captures, so creating an iterator cost time in proportion to the data
    (measured on 2 cores: 0.1-0.6 s for CIPLAB's 230 MB of training pixels, 1.6 s for 900 MB;
    0.01 s without). Nothing is lost here: the maps are already parallel, the batches already
    prefetched (runtime autotuning stays on), and no fusion applies to gathering by index; a
    steady-state epoch took the same time either way (1.61 s with the rewrites, 1.51 s without,
    medians of 6, flip + shift augmentation).
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return options


def region_targets_of(split: Split, class_names: tuple[str, ...], fake_class: str) -> np.ndarray:
    """Edited-region targets [N, 4] (left eye, right eye, nose, mouth) of a split's images.

    Real images: nothing edited (0). Fakes named like CIPLAB's: their edited regions. Other
    fakes: unknown (-1), which the auxiliary loss ignores.

    Raises:
        UserError: the task has no `fake_class`.
    """
    from tfpipeline.data.regions import parse_region_name

    if fake_class not in class_names:
        raise UserError(
            f"--aux-regions and --region-crops need a real/fake task with a '{fake_class}' class "
            f"(or --fake-class NAME); classes here: {', '.join(class_names)}"
        )
    fake = class_names.index(fake_class)
    targets = np.full((len(split), 4), -1.0, np.float32)
    targets[split.labels != fake] = 0.0
    for i, path in enumerate(split.paths):
        label = parse_region_name(path) if split.labels[i] == fake else None
        if label is not None:
            targets[i] = np.array(label.edited, np.float32)
    return targets


def encode_labels(labels: tf.Tensor, label_mode: str, num_classes: int) -> tf.Tensor:
    """Class indices -> the label format the loss expects."""
    if label_mode == "binary":
        return tf.cast(tf.reshape(labels, (-1, 1)), tf.float32)
    if label_mode == "categorical":
        return tf.one_hot(labels, num_classes, dtype=tf.float32)
    return labels
