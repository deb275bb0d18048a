"""Resolve a `--data` value into labelled splits: image folders, TFDS names, embedded data.

The result is a :class:`DataSource`: class names plus, per split, either file paths (decoded
later in the tf.data pipeline) or in-memory uint8 arrays. Nothing is decoded here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from tfpipeline.config import DataConfig, fold_numbers
from tfpipeline.data.split import DataSource, Split, apply_fold, stratified_split
from tfpipeline.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EMBEDDED = {
    "faces": "scikit-image's LFW subset: 100 face and 100 non-face 25x25 grayscale photos",
    "digits": "scikit-learn's handwritten digits: 1,797 8x8 grayscale images, 10 classes",
}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
# Files that operating systems and tools drop into folders; never images, never worth a warning.
_SYSTEM_FILES = {"thumbs.db", "desktop.ini", ".ds_store"}


def resolve_source(config: DataConfig) -> DataSource:
    """Turn `config.data` into a DataSource, applying `--classes` and the split policy.

    Raises:
        UserError: for an unknown `--data` value, empty or inconsistent class folders, or a
            dataset too small for the requested split.
    """
    source = _resolve(config)
    if config.fold:
        folded = apply_fold(source.splits, fold_numbers(config.fold), config.seed)
        source = DataSource(source.kind, source.location, source.class_names, folded, source.ignored_files)
    return source


def _resolve(config: DataConfig) -> DataSource:
    spec = config.data
    if spec.startswith("tfds:"):
        from tfpipeline.data.tfds_source import load_tfds

        return load_tfds(config)
    if spec in EMBEDDED:
        return _embedded(config)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(path, config)
    if path.exists():
        raise UserError(f"--data {spec}: is a file; expected a folder of class subfolders")
    raise UserError(
        f"--data {spec}: no such folder, and not a known dataset "
        f"(embedded: {', '.join(EMBEDDED)}; or tfds:NAME such as tfds:cifar10)"
    )


def with_absolute_folder(config: DataConfig) -> DataConfig:
    """`config` with a local `--data` folder made absolute (other values unchanged).

    A run records its data in config.yaml and splits/*.csv; a relative folder there would only
    resolve from the directory the run was trained in, so `evaluate`, `predict` and `--resume`
    from anywhere else would not find it.
    """
    spec = config.data
    if spec.startswith("tfds:") or spec in EMBEDDED or not Path(spec).expanduser().is_dir():
        return config
    return replace(config, data=str(Path(spec).expanduser().resolve()))


def resolve_all(config: DataConfig) -> DataSource:
    """Every image of `config.data` as one split named `all` (evaluating on a whole folder).

    A folder's images are taken as they are, from its split subfolders or its class folders,
    without splitting; embedded and TFDS data join their splits.

    Raises:
        UserError: as :func:`resolve_source`.
    """
    path = Path(config.data).expanduser()
    if config.data.startswith("tfds:") or config.data in EMBEDDED or not path.is_dir():
        source = resolve_source(config)
        joined = Split.concatenate([source.splits[name] for name in source.splits])
        return DataSource(
            source.kind, source.location, source.class_names, {"all": joined}, source.ignored_files
        )
    folders = list(_find_split_folders(path).values()) or [path]
    scans = [_scan_classes(folder, str(folder)) for folder in folders]
    merged: dict[str, tuple[list[str], list[str]]] = {}
    for scan in scans:
        for name, (images, ignored) in scan.items():
            entry = merged.setdefault(name, ([], []))
            entry[0].extend(images)
            entry[1].extend(ignored)
    classes = _choose_classes(sorted(merged), config, str(path))
    split, ignored = _labelled(merged, classes, str(path))
    return DataSource("folder", str(path), classes, {"all": split}, tuple(ignored))


def class_names_of(config: DataConfig) -> tuple[str, ...]:
    """The classes `config.data` holds (alphabetical for folders), without splitting anything."""
    path = Path(config.data).expanduser()
    if config.data.startswith("tfds:") or config.data in EMBEDDED or not path.is_dir():
        return resolve_source(replace(config, classes=())).class_names
    folders = list(_find_split_folders(path).values()) or [path]
    return tuple(sorted({d.name for folder in folders for d in _subfolders(folder)}))


# --------------------------------------------------------------------------- folders


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_split_folders(path: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (path / name).is_dir():
                found[split] = path / name
                break
    return found


def list_class_folder(folder: Path) -> tuple[list[str], list[str]]:
    """All image files below `folder` (recursively, sorted) and the other files skipped."""
    images, ignored = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(full)
            elif not name.startswith(".") and name.lower() not in _SYSTEM_FILES:
                ignored.append(full)
    return images, ignored


def _scan_classes(folder: Path, where: str) -> dict[str, tuple[list[str], list[str]]]:
    classes = {d.name: list_class_folder(d) for d in _subfolders(folder)}
    if not classes:
        raise UserError(f"{where}: has no class subfolders (expected one subfolder per class)")
    return classes


def _choose_classes(found: list[str], config: DataConfig, where: str) -> tuple[str, ...]:
    if not config.classes:
        return tuple(sorted(found))
    missing = [c for c in config.classes if c not in found]
    if missing:
        raise UserError(f"--classes: {', '.join(missing)} not found in {where} (found: {', '.join(found)})")
    return tuple(config.classes)


def _labelled(scan: dict, classes: tuple[str, ...], where: str) -> tuple[Split, list[str]]:
    paths, labels, ignored = [], [], []
    for index, name in enumerate(classes):
        images, skipped = scan[name]
        if not images:
            raise UserError(f"{where}/{name}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += images
        labels += [index] * len(images)
        ignored += skipped
    return Split(labels=np.asarray(labels, np.int32), paths=tuple(paths)), ignored


def _folder(path: Path, config: DataConfig) -> DataSource:
    split_dirs = _find_split_folders(path)
    if not split_dirs:
        scan = _scan_classes(path, str(path))
        classes = _choose_classes(list(scan), config, str(path))
        everything, ignored = _labelled(scan, classes, str(path))
        splits = stratified_split(everything, config.split_ratios, config.seed, classes)
        return DataSource("folder-classes", str(path), classes, splits, tuple(ignored))
    if "train" not in split_dirs:
        raise UserError(f"{path}: has {', '.join(d.name for d in split_dirs.values())} but no train/ folder")
    scans = {split: _scan_classes(d, str(d)) for split, d in split_dirs.items()}
    train_classes = sorted(scans["train"])
    for split, scan in scans.items():
        if split != "train" and sorted(scan) != train_classes:
            only_train = sorted(set(train_classes) - set(scan))
            only_here = sorted(set(scan) - set(train_classes))
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(only_train)}" if only_train else "",
                    f"extra {', '.join(only_here)}" if only_here else "",
                )
                if part
            )
            raise UserError(f"{split_dirs[split]}: class folders differ from train/ ({detail})")
    classes = _choose_classes(train_classes, config, str(split_dirs["train"]))
    splits, ignored = {}, []
    for split, scan in scans.items():
        splits[split], skipped = _labelled(scan, classes, str(split_dirs[split]))
        ignored += skipped
    if "val" not in splits:
        # Only train (and maybe test) given: carve validation out of train, stratified.
        r_train, r_val, _ = config.split_ratios
        carved = stratified_split(splits["train"], (r_train, r_val, 0.0), config.seed, classes, rescale=True)
        splits["train"], splits["val"] = carved["train"], carved["val"]
    return DataSource("folder", str(path), classes, splits, tuple(ignored))


# --------------------------------------------------------------------------- embedded


def _embedded(config: DataConfig) -> DataSource:
    if config.data == "faces":
        from skimage.data import lfw_subset

        # 200 25x25 floats in [0, 1]: the first 100 are faces, the last 100 are not.
        images = np.round(lfw_subset() * 255).astype(np.uint8)[..., None]
        labels = np.repeat(np.array([1, 0], np.int32), 100)
        names = ("background", "face")
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int32)
        names = tuple(str(d) for d in range(10))
    classes = _choose_classes(list(names), config, f"embedded dataset '{config.data}'")
    # Re-index labels to the chosen class order and drop classes not selected.
    remap = np.array([classes.index(n) if n in classes else -1 for n in names], np.int32)
    labels = remap[labels]
    keep = labels >= 0
    everything = Split(labels=labels[keep], images=images[keep])
    splits = stratified_split(everything, config.split_ratios, config.seed, classes)
    return DataSource("embedded", config.data, classes, splits)
