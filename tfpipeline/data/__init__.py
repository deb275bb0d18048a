"""The data stage: resolve `--data`, check files, and build tf.data pipelines.

Typical use::

    from tfpipeline.config import DataConfig
    from tfpipeline.data import load_data

    bundle = load_data(DataConfig(data="path/to/faces"), scaling="unit", label_mode="binary")
    model.fit(bundle.train, validation_data=bundle.val)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tfpipeline.config import DataConfig
from tfpipeline.data.check import CheckReport, check_files
from tfpipeline.data.pipeline import build_dataset
from tfpipeline.data.sources import resolve_source
from tfpipeline.data.split import DataSource, Split
from tfpipeline.errors import UserError

__all__ = [
    "DataBundle",
    "DataInfo",
    "EvalSplit",
    "build_dataset",
    "check_source",
    "load_data",
    "load_split",
    "resolve_source",
]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataInfo:
    """What a run needs to record about its data.

    Attributes:
        source: `folder`, `folder-classes`, `tfds` or `embedded`.
        location: the `--data` value as resolved (a folder path, `tfds:NAME` or a name).
        class_names: index -> name.
        positive_class / positive_index: the class precision and recall refer to (binary only).
        counts: split -> class -> number of images.
        train_prior: share of the positive class in train (binary), the assessment's threshold.
        files: split -> list of [path, label] (file sources only), so a run can be re-created.
        skipped_bad: files dropped by `--skip-bad`.
        ignored_files: files with unsupported extensions found in class folders.
    """

    source: str
    location: str
    class_names: tuple[str, ...]
    positive_class: str | None
    positive_index: int | None
    counts: dict[str, dict[str, int]]
    train_prior: float | None
    files: dict[str, list[list[Any]]] = field(default_factory=dict)
    skipped_bad: tuple[str, ...] = ()
    ignored_files: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view without the (long) file lists."""
        return {
            "source": self.source,
            "location": self.location,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "train_prior": self.train_prior,
            "counts": self.counts,
            "skipped_bad": len(self.skipped_bad),
            "ignored_files": len(self.ignored_files),
        }


@dataclass(frozen=True)
class DataBundle:
    """Ready-to-fit datasets plus the facts about them."""

    train: Any
    val: Any
    test: Any | None
    info: DataInfo
    splits: dict[str, Split]


def check_source(source: DataSource, config: DataConfig) -> CheckReport | None:
    """Run the file check over every file of every split; None for in-memory sources."""
    paths = [p for split in source.splits.values() for p in split.paths]
    if not paths:
        return None
    from tfpipeline.data.pipeline import decode_settings

    # The check's decoding pass also fills the pixel cache the pipeline reads (cache=memory).
    fill = decode_settings(config) if config.cache == "memory" else None
    return check_files(paths, channels=config.channels, target_hw=tuple(config.image_size), fill=fill)


def _drop_bad(source: DataSource, report: CheckReport | None, config: DataConfig) -> tuple[dict, tuple]:
    if report is None or not report.bad_paths:
        return source.splits, ()
    if not config.skip_bad:
        raise UserError(
            f"{len(report.bad_paths)} bad image file(s) in {source.location}; fix or remove them, "
            f"or pass --skip-bad to train without them.\n{report.format(limit=50)}"
        )
    bad = report.bad_paths
    splits = {}
    for name, split in source.splits.items():
        kept = split.subset(np.array([p not in bad for p in split.paths]))
        if len(kept) == 0:
            raise UserError(f"--skip-bad: every image of the {name} split is bad")
        splits[name] = kept
    log.warning("--skip-bad: skipped %d bad file(s) of %d", len(bad), report.checked)
    return splits, tuple(sorted(bad))


def resolve_positive(
    class_names: tuple[str, ...], positive_class: str | None
) -> tuple[str | None, int | None]:
    """Positive class for binary tasks: `--positive-class` or, by default, the second class."""
    if len(class_names) != 2:
        if positive_class:
            raise UserError(f"--positive-class applies to two-class data; this data has {len(class_names)}")
        return None, None
    if positive_class is None:
        return class_names[1], 1
    if positive_class not in class_names:
        raise UserError(f"--positive-class {positive_class}: not a class ({', '.join(class_names)})")
    return positive_class, class_names.index(positive_class)


def _describe(source: DataSource, splits: dict[str, Split], skipped: tuple, config: DataConfig) -> DataInfo:
    """The DataInfo of checked splits: counts, positive class, train prior, file lists."""
    class_names = source.class_names
    positive_class, positive_index = resolve_positive(class_names, config.positive_class)
    num_classes = len(class_names)
    counts = {
        name: {
            c: int(n) for c, n in zip(class_names, np.bincount(s.labels, minlength=num_classes), strict=True)
        }
        for name, s in splits.items()
    }
    train_prior = None
    if positive_index is not None and "train" in splits:
        train_prior = float(np.mean(splits["train"].labels == positive_index))
    files = {
        name: [[p, int(y)] for p, y in zip(s.paths, s.labels, strict=True)]
        for name, s in splits.items()
        if s.from_files
    }
    return DataInfo(
        source=source.kind,
        location=source.location,
        class_names=class_names,
        positive_class=positive_class,
        positive_index=positive_index,
        counts=counts,
        train_prior=train_prior,
        files=files,
        skipped_bad=skipped,
        ignored_files=source.ignored_files,
    )


def _checked(source: DataSource, config: DataConfig, check: bool) -> tuple[dict[str, Split], tuple]:
    if len(source.class_names) < 2:
        raise UserError(f"{source.location}: need at least two classes, found {len(source.class_names)}")
    report = check_source(source, config) if check else None
    splits, skipped = _drop_bad(source, report, config)
    if report is not None and report.warnings:
        kinds = sorted({p.kind for p in report.warnings})
        log.info("%d unusual file(s) (%s) are converted on load", len(report.warnings), ", ".join(kinds))
    return splits, skipped


def load_data(
    config: DataConfig,
    *,
    scaling: str,
    label_mode: str | None = None,
    check: bool = True,
    epochs: tuple[int, int] | None = None,
    region_targets: bool = False,
) -> DataBundle:
    """Resolve, check and build the train/val(/test) pipelines for one run.

    Args:
        config: the data configuration.
        scaling: pixel range the model expects (`unit`, `symmetric`, `raw`); callers resolve
            `config.scaling == "model"` to the model's preference before calling.
        label_mode: `binary`, `categorical` or `int`; default: binary for two classes,
            categorical otherwise.
        check: run the bad-file check (cached) before building anything.
        epochs: `(first, stop)` to stream the training epochs as one dataset, each shuffled by
            its epoch number (see :func:`build_dataset`); None gives a plain reshuffling dataset.
        region_targets: training batches also carry the edited-region targets of an auxiliary
            region head (`y = (label, regions)`).

    Raises:
        UserError: for any data problem, including bad files without `--skip-bad`.
    """
    source = resolve_source(config)
    splits, skipped = _checked(source, config, check)
    info = _describe(source, splits, skipped, config)
    num_classes = info.num_classes
    label_mode = label_mode or ("binary" if num_classes == 2 else "categorical")
    datasets = {
        name: build_dataset(
            split,
            config,
            scaling=scaling,
            training=name == "train",
            num_classes=num_classes,
            label_mode=label_mode,
            cache_name=name,
            epochs=epochs if name == "train" else None,
            class_names=info.class_names,
            region_targets=region_targets and name == "train",
        )
        for name, split in splits.items()
    }
    return DataBundle(datasets["train"], datasets["val"], datasets.get("test"), info, splits)


@dataclass(frozen=True)
class EvalSplit:
    """One split to evaluate on: its ordered dataset, its examples and the facts about its data."""

    name: str
    dataset: Any
    split: Split
    info: DataInfo


def load_split(config: DataConfig, name: str, *, scaling: str, class_names: tuple[str, ...]) -> EvalSplit:
    """An ordered (unshuffled, unaugmented) dataset of one split, labelled in `class_names` order.

    Args:
        config: the data configuration (a run's, or a run's with another `data`).
        name: `train`, `val`, `test`, or `all`: every image of the data, unsplit (e.g. a whole
            out-of-domain folder).
        scaling: the model's pixel range.
        class_names: the model's classes; the data must hold exactly these (or, with
            `config.classes` set as by the run that chose them, at least these).

    Raises:
        UserError: the data's classes differ from `class_names` (both are listed), the split does
            not exist, or the data has bad files (without `--skip-bad`).
    """
    from tfpipeline.data.sources import class_names_of, resolve_all

    found = class_names_of(replace(config, classes=()))
    missing = set(class_names) - set(found)
    # A run trained on a chosen subset (`--classes`) may be evaluated on its own data; any other
    # data must hold exactly the model's classes.
    extra = set() if config.classes else set(found) - set(class_names)
    if missing or extra:
        raise UserError(
            f"{config.data}: holds classes {', '.join(found)} but the model knows {', '.join(class_names)}; "
            "evaluate on data with the same classes"
        )
    config = replace(config, classes=tuple(class_names))
    source = resolve_all(config) if name == "all" else resolve_source(config)
    if name not in source.splits:
        raise UserError(
            f"{source.location}: has no {name} split (it has {', '.join(source.splits)}, or use all)"
        )
    splits, skipped = _checked(
        DataSource(
            source.kind,
            source.location,
            source.class_names,
            {name: source.splits[name]},
            source.ignored_files,
        ),
        config,
        True,
    )
    info = _describe(source, splits, skipped, config)
    label_mode = "binary" if len(class_names) == 2 else "categorical"
    dataset = build_dataset(
        splits[name],
        config,
        scaling=scaling,
        training=False,
        num_classes=len(class_names),
        label_mode=label_mode,
        cache_name=name,
    )
    return EvalSplit(name, dataset, splits[name], info)
