"""`--data tfds:NAME[:VERSION]`: a TensorFlow Datasets dataset as labelled splits.

TFDS datasets are read from `--tfds-data-dir` (TFDS' default folder otherwise). Nothing is
downloaded unless `--tfds-download` is given, because a download on a machine without internet
retries for minutes before failing; without it, unprepared data gets an error that says how to
prepare it.
"""

from __future__ import annotations

import numpy as np

from tfpipeline.config import DataConfig
from tfpipeline.data.split import DataSource, Split, stratified_split
from tfpipeline.errors import UserError


def load_tfds(config: DataConfig) -> DataSource:
    """Load `config.data` (`tfds:NAME[:VERSION]`) into train/val(/test) splits.

    The dataset's own `validation` split is used when it has one; otherwise a stratified
    validation split is carved from `train` with `config.seed`, using the val share of
    `config.split_ratios` relative to train+val. A `test` split is used when present.

    Raises:
        UserError: unknown dataset or version, data not prepared (and no download allowed),
            a failed download, or a dataset without an (image, label) supervised pair.
    """
    import tensorflow_datasets as tfds

    name = config.data.removeprefix("tfds:")
    if not name:
        raise UserError("--data tfds:NAME needs a dataset name, e.g. tfds:cifar10")
    try:
        builder = tfds.builder(name, data_dir=config.tfds_data_dir)
    except Exception as exc:  # tfds raises DatasetNotFoundError or AssertionError (bad version)
        first_line = str(exc).splitlines()[0]
        raise UserError(f"--data {config.data}: {first_line}") from None
    supervised = builder.info.supervised_keys
    if not supervised or len(supervised) != 2:
        raise UserError(f"--data {config.data}: dataset has no (image, label) supervised keys")
    image_key, label_key = supervised
    label_feature = builder.info.features[label_key]
    class_names = tuple(getattr(label_feature, "names", None) or ())
    if not class_names:
        raise UserError(f"--data {config.data}: label '{label_key}' is not a class label")

    _check_classes(class_names, config)

    if config.tfds_download:
        try:
            builder.download_and_prepare()
        except Exception as exc:  # network, checksum or disk errors: report and stop
            raise UserError(f"--data {config.data}: download failed ({type(exc).__name__}: {exc})") from None

    # Known split names come from the prepared dataset's metadata; without metadata (mocked
    # data) fall back to the conventional names.
    available = set(builder.info.splits.keys()) or {"train", "test"}
    if "train" not in available:
        raise UserError(
            f"--data {config.data}: has no 'train' split (splits: {', '.join(sorted(available))})"
        )

    splits = {}
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        if theirs in available:
            splits[ours] = _read_split(builder, theirs, image_key, label_key, config)

    if "val" not in splits:
        r_train, r_val, _ = config.split_ratios
        carved = stratified_split(
            splits["train"], (r_train, r_val, 0.0), config.seed, class_names, rescale=True
        )
        splits["train"], splits["val"] = carved["train"], carved["val"]
    return DataSource("tfds", config.data, class_names, splits)


def _read_split(builder, split: str, image_key: str, label_key: str, config: DataConfig) -> Split:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        # One cheap pass for the labels (images left encoded), needed to stratify and count.
        labels_only = builder.as_dataset(
            split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()}
        )
        labels = np.fromiter((int(e[label_key]) for e in labels_only.as_numpy_iterator()), np.int32)
        dataset = builder.as_dataset(split=split, shuffle_files=False).map(
            lambda e: (e[image_key], tf.cast(e[label_key], tf.int32))
        )
    except AssertionError as exc:  # tfds' "could not find data in DIR ..."
        where = config.tfds_data_dir or "TFDS' default data folder (~/tensorflow_datasets)"
        raise UserError(
            f"--data {config.data}: no prepared data in {where} and tfpipeline does not download "
            f"by default. Either copy a prepared copy there (on a machine with internet: "
            f"`tfds build {builder.name} --data_dir DIR`) and pass --tfds-data-dir DIR, or allow "
            f"the download with --tfds-download. ({str(exc).splitlines()[0]})"
        ) from None
    return Split(labels=labels, dataset=dataset)


def _check_classes(class_names: tuple[str, ...], config: DataConfig) -> None:
    """`--classes` may only restate a TFDS dataset's own class order."""
    if not config.classes or tuple(config.classes) == class_names:
        return
    missing = [c for c in config.classes if c not in class_names]
    if missing:
        raise UserError(f"--classes: {', '.join(missing)} not in {config.data} ({', '.join(class_names)})")
    raise UserError(
        f"--classes: TFDS datasets keep their own class order ({', '.join(class_names)}); "
        "re-ordering or sub-selecting classes is supported for folders and embedded data only"
    )
