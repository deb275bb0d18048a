"""Images to test a detector on, whatever their classes: `evaluate --ood-data`, `ood compare`.

An out-of-domain set has arbitrary classes or none, so it is read without labels: a folder's
every image below it (a flat folder, class folders, split/class folders alike), or every image
of an embedded (`digits`) or `tfds:` dataset. Images go through the run's own decoding, resizing
and scaling (no augmentation, no cache); files the decoder cannot use are skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.config import AugmentConfig, DataConfig
from tfpipeline.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """An ordered, unlabelled set of images prepared as a run's model expects them.

    Attributes:
        location: the folder or dataset name.
        dataset: batches of (model-scaled images, dummy labels), in `paths` order.
        count: number of images.
        paths: the files (empty for in-memory data).
        skipped: files skipped as undecodable.
    """

    location: str
    dataset: Any
    count: int
    paths: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def load_images(location: str | Path, data: DataConfig, scaling: str) -> ImageSet:
    """Every image of `location`, decoded with the run's data settings `data`.

    Args:
        location: a folder (searched recursively), an embedded dataset name or `tfds:NAME`.
        data: the run's DataConfig (image size, channels, resize, interpolation, batch size).
        scaling: the run's pixel range.

    Raises:
        UserError: no such folder or dataset, or no usable image in it.
    """
    from tfpipeline.data import build_dataset
    from tfpipeline.data.check import check_files
    from tfpipeline.data.sources import EMBEDDED, list_class_folder, resolve_all
    from tfpipeline.data.split import Split

    settings = replace(data, cache="none", crop=0, fold="", classes=(), augment=AugmentConfig())
    text = str(location)
    path = Path(text).expanduser()
    skipped: tuple[str, ...] = ()
    if path.is_dir():
        paths, _ = list_class_folder(path)
        if not paths:
            raise UserError(f"{path}: no image files below it")
        report = check_files(paths, channels=data.channels, target_hw=tuple(data.image_size))
        bad = set(report.bad_paths)
        if bad:
            log.warning("%s: skipped %d undecodable file(s), e.g. %s", path, len(bad), sorted(bad)[0])
            skipped = tuple(sorted(bad))
            paths = [p for p in paths if p not in bad]
        if not paths:
            raise UserError(f"{path}: every image file is undecodable")
        split = Split(labels=np.zeros(len(paths), np.int32), paths=tuple(paths))
    elif text.startswith("tfds:") or text in EMBEDDED:
        split = resolve_all(replace(settings, data=text)).splits["all"]
    else:
        raise UserError(f"{text}: no such folder (or embedded/tfds dataset) of out-of-domain images")
    dataset = build_dataset(
        split, replace(settings, data=text), scaling=scaling, training=False, num_classes=2, label_mode="int"
    )
    return ImageSet(text, dataset, len(split), tuple(split.paths), skipped)
