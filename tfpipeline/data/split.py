"""Labelled splits and how a labelled set is divided: the data stage's leaf types.

:class:`Split` (one split's labels and images) and :class:`DataSource` (the named splits of one
dataset) are produced by :mod:`~tfpipeline.data.sources` and :mod:`~tfpipeline.data.tfds_source`
and consumed by the pipeline; :func:`stratified_split` and :func:`stratified_folds` divide a
labelled set deterministically. Nothing here decodes an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from tfpipeline.errors import UserError


@dataclass(frozen=True, eq=False)
class Split:
    """One split's labels plus exactly one way to get its images.

    Attributes:
        labels: int32 class indices.
        paths: encoded image files, decoded later in the tf.data pipeline.
        images: in-memory uint8 images [N, H, W, C] (embedded datasets).
        dataset: a tf.data.Dataset of (uint8 image [H, W, C], label) pairs (TFDS), whose
            elements line up with `labels`.
    """

    labels: np.ndarray
    paths: tuple[str, ...] = ()
    images: np.ndarray | None = None
    dataset: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def from_files(self) -> bool:
        return self.images is None and self.dataset is None

    @classmethod
    def concatenate(cls, splits: list[Split]) -> Split:
        """One split holding the examples of `splits` in order (all of one kind: files, arrays
        or datasets)."""
        labels = np.concatenate([s.labels for s in splits]).astype(np.int32)
        if all(s.from_files for s in splits):
            return cls(labels=labels, paths=tuple(p for s in splits for p in s.paths))
        if all(s.images is not None for s in splits):
            return cls(labels=labels, images=np.concatenate([s.images for s in splits]))
        if all(s.dataset is not None for s in splits):
            dataset = splits[0].dataset
            for other in splits[1:]:
                dataset = dataset.concatenate(other.dataset)
            return cls(labels=labels, dataset=dataset)
        raise ValueError("cannot concatenate splits of different kinds (files, arrays, datasets)")

    def subset(self, keep: np.ndarray) -> Split:
        """The examples where boolean mask `keep` is true, in their original order."""
        if self.dataset is not None:
            import tensorflow as tf

            mask = tf.constant(keep)
            selected = self.dataset.enumerate().filter(lambda i, _: mask[i]).map(lambda _, example: example)
            return Split(labels=self.labels[keep], dataset=selected)
        return Split(
            labels=self.labels[keep],
            paths=tuple(p for p, k in zip(self.paths, keep, strict=True) if k) if self.paths else (),
            images=None if self.images is None else self.images[keep],
        )


@dataclass(frozen=True, eq=False)
class DataSource:
    """Labelled splits of one dataset.

    Attributes:
        kind: `folder` (split subfolders), `folder-classes` (split here), `tfds` or `embedded`.
        location: the folder, `tfds:NAME` or embedded name.
        class_names: index -> name.
        splits: `train`, `val` and optionally `test`.
        ignored_files: files in class folders skipped for an unsupported extension.
    """

    kind: str
    location: str
    class_names: tuple[str, ...]
    splits: dict[str, Split]
    ignored_files: tuple[str, ...] = field(default=())


def stratified_split(
    data: Split,
    ratios: tuple[float, float, float],
    seed: int,
    class_names: tuple[str, ...],
    *,
    rescale: bool = False,
) -> dict[str, Split]:
    """Split `data` into train/val(/test) keeping class proportions, deterministically.

    Uses scikit-learn's `train_test_split` with `random_state=seed` (101 by default, as the
    CIFAR-10 brief asked), first carving test, then val from the rest; the same inputs give the
    same split on every machine.

    Args:
        ratios: train/val/test fractions (test may be 0: no test split).
        rescale: normalise ratios that do not sum to 1 (carving val out of a given train).

    Raises:
        UserError: naming the class that has too few images for the requested split.
    """
    r_train, r_val, r_test = ratios
    if rescale:
        total = r_train + r_val + r_test
        r_train, r_val, r_test = r_train / total, r_val / total, r_test / total
    counts = np.bincount(data.labels, minlength=len(class_names))
    needed = 1 + (r_val > 0) + (r_test > 0)
    for name, count in zip(class_names, counts, strict=True):
        if count < needed * 2:
            raise UserError(
                f"class '{name}' has {count} image(s): too few for a stratified "
                f"{'/'.join(f'{r:g}' for r in ratios)} split (need at least {needed * 2})"
            )
    indices = np.arange(len(data))
    out = {}
    rest = indices
    try:
        if r_test > 0:
            rest, test = train_test_split(indices, test_size=r_test, random_state=seed, stratify=data.labels)
            out["test"] = np.sort(test)
        train, val = train_test_split(
            rest, test_size=r_val / (r_train + r_val), random_state=seed, stratify=data.labels[rest]
        )
    except ValueError as exc:  # e.g. a split smaller than the number of classes
        raise UserError(
            f"{len(data)} images in {len(class_names)} classes are too few for a stratified "
            f"{'/'.join(f'{r:g}' for r in ratios)} split: {str(exc).splitlines()[0]}"
        ) from None
    out["train"], out["val"] = np.sort(train), np.sort(val)
    result = {}
    for name in ("train", "val", "test"):
        if name in out:
            mask = np.zeros(len(data), bool)
            mask[out[name]] = True
            result[name] = data.subset(mask)
    return result


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each of `folds` stratified folds (disjoint, covering all examples), seeded.

    Raises:
        UserError: a class has fewer examples than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    if counts[counts > 0].min() < folds:
        raise UserError(
            f"{folds}-fold cross-validation needs at least {folds} images of every class; the smallest "
            f"class has {int(counts[counts > 0].min())}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels)]


def apply_fold(splits: dict[str, Split], fold: tuple[int, int], seed: int) -> dict[str, Split]:
    """Splits whose train/val are fold k's train and validation parts of train+val (k, n 1-based)."""
    k, n = fold
    joined = Split.concatenate([splits["train"], splits["val"]])
    held = stratified_folds(joined.labels, n, seed)[k - 1]
    mask = np.zeros(len(joined), bool)
    mask[held] = True
    out = dict(splits)
    out["train"], out["val"] = joined.subset(~mask), joined.subset(mask)
    return out
