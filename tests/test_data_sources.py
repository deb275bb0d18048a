"""Resolving `--data`: folder layouts, class order, splitting, embedded and TFDS datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tfpipeline.config import DataConfig
from tfpipeline.data import resolve_positive, resolve_source
from tfpipeline.data.split import Split, stratified_split
from tfpipeline.errors import UserError


def resolve(data, **options):
    return resolve_source(DataConfig(data=str(data), **options))


def label_of(path: str, class_names) -> int:
    return class_names.index(Path(path).parent.name)


def assert_labels_match_folders(source):
    for split in source.splits.values():
        assert [label_of(p, source.class_names) for p in split.paths] == split.labels.tolist()


def all_paths(source) -> list[str]:
    return [p for split in source.splits.values() for p in split.paths]


# --------------------------------------------------------------------------- split layout


def test_split_layout(image_folder):
    source = resolve(image_folder)
    assert source.kind == "folder"
    assert source.class_names == ("blue", "red")
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 16, "val": 4, "test": 4}
    assert_labels_match_folders(source)
    for name, split in source.splits.items():
        assert all(f"/{name}/" in p for p in split.paths)
    assert source.splits["train"].labels.dtype == np.int32


def test_validation_folder_alias(image_folder):
    (image_folder / "val").rename(image_folder / "validation")
    source = resolve(image_folder)
    assert len(source.splits["val"]) == 4
    assert all("/validation/" in p for p in source.splits["val"].paths)


def test_val_carved_from_train_when_missing(image_folder):
    shutil.rmtree(image_folder / "val")
    source = resolve(image_folder)
    train, val = source.splits["train"], source.splits["val"]
    assert len(train) + len(val) == 16
    assert set(train.paths).isdisjoint(val.paths)
    assert all("/train/" in p for p in train.paths + val.paths)
    assert set(val.labels.tolist()) == {0, 1}
    assert len(source.splits["test"]) == 4
    assert_labels_match_folders(source)


def test_test_split_optional(image_folder):
    shutil.rmtree(image_folder / "test")
    assert set(resolve(image_folder).splits) == {"train", "val"}


def test_classes_fix_order(image_folder):
    source = resolve(image_folder, classes=("red", "blue"))
    assert source.class_names == ("red", "blue")
    assert_labels_match_folders(source)
    assert resolve_positive(source.class_names, None) == ("blue", 1)


def test_classes_select_subset(class_folder, make_images):
    make_images(class_folder / "green", 12, "green")
    assert resolve(class_folder).class_names == ("blue", "green", "red")
    source = resolve(class_folder, classes=("red", "green"))
    assert source.class_names == ("red", "green")
    assert not any("/blue/" in p for p in all_paths(source))
    assert len(all_paths(source)) == 24


def test_unknown_class_in_classes(image_folder):
    with pytest.raises(UserError, match="purple"):
        resolve(image_folder, classes=("blue", "purple"))


def test_positive_class():
    assert resolve_positive(("blue", "red"), None) == ("red", 1)
    assert resolve_positive(("blue", "red"), "blue") == ("blue", 0)
    assert resolve_positive(("a", "b", "c"), None) == (None, None)
    with pytest.raises(UserError, match="not a class"):
        resolve_positive(("blue", "red"), "green")
    with pytest.raises(UserError, match="two-class"):
        resolve_positive(("a", "b", "c"), "a")


# --------------------------------------------------------------------------- class-only layout


def test_class_layout_split_is_stratified_disjoint_complete(class_folder):
    source = resolve(class_folder)
    assert source.kind == "folder-classes"
    sizes = {k: len(v) for k, v in source.splits.items()}
    assert sizes == {"train": 18, "val": 3, "test": 3}
    for split in source.splits.values():
        assert set(split.labels.tolist()) == {0, 1}
    paths = all_paths(source)
    assert len(paths) == len(set(paths)) == 24
    assert sorted(paths) == sorted(str(p) for p in class_folder.rglob("*.*"))
    assert_labels_match_folders(source)
    assert np.bincount(source.splits["train"].labels).tolist() == [9, 9]


def test_class_layout_split_is_deterministic_and_seeded(class_folder):
    first, again = resolve(class_folder), resolve(class_folder)
    for name in ("train", "val", "test"):
        assert first.splits[name].paths == again.splits[name].paths
    other = resolve(class_folder, seed=7)
    assert any(first.splits[n].paths != other.splits[n].paths for n in ("train", "val", "test"))


def test_split_ratios_without_test(class_folder):
    source = resolve(class_folder, split_ratios=(0.75, 0.25, 0.0))
    assert set(source.splits) == {"train", "val"}
    assert len(source.splits["train"]) == 18


def test_nested_images_and_ignored_files(class_folder, make_images):
    make_images(class_folder / "red" / "more", 2, "red", start=50)
    (class_folder / "red" / "notes.txt").write_text("not an image")
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0")
    (class_folder / "red" / "Thumbs.db").write_bytes(b"\0")
    source = resolve(class_folder)
    assert len(all_paths(source)) == 26
    assert source.ignored_files == (str(class_folder / "red" / "notes.txt"),)
    assert "more" in "".join(all_paths(source))


def test_stratified_split_too_few_images_names_class():
    data = Split(labels=np.array([0] * 10 + [1] * 3, np.int32), paths=tuple(f"f{i}" for i in range(13)))
    with pytest.raises(UserError, match="'b' has 3"):
        stratified_split(data, (0.75, 0.125, 0.125), 101, ("a", "b"))


def test_stratified_split_many_small_classes_is_a_user_error():
    # 5 classes x 6 images: a 12.5% test split has 4 images, fewer than there are classes.
    data = Split(labels=np.repeat(np.arange(5), 6).astype(np.int32), paths=tuple(str(i) for i in range(30)))
    with pytest.raises(UserError, match="class"):
        stratified_split(data, (0.75, 0.125, 0.125), 101, tuple("abcde"))


def test_stratified_split_keeps_order_and_in_memory_images():
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    data = Split(labels=np.repeat([0, 1], 20).astype(np.int32), images=images)
    splits = stratified_split(data, (0.5, 0.25, 0.25), 3, ("a", "b"))
    seen = np.concatenate([s.images.ravel() for s in splits.values()])
    assert sorted(seen.tolist()) == list(range(40))
    for split in splits.values():
        assert np.all(np.diff(split.images.ravel().astype(int)) > 0)
        assert np.all(split.labels == (split.images.ravel() >= 20))


# --------------------------------------------------------------------------- errors


def test_empty_class_folder(image_folder):
    for split in ("train", "val", "test"):
        (image_folder / split / "green").mkdir()
    with pytest.raises(UserError, match=r"green: class folder has no images"):
        resolve(image_folder)


def test_empty_class_folder_class_layout(class_folder):
    (class_folder / "green").mkdir()
    with pytest.raises(UserError, match="green"):
        resolve(class_folder)


def test_class_missing_from_a_split(image_folder):
    shutil.rmtree(image_folder / "val" / "red")
    with pytest.raises(UserError, match=r"val: class folders differ from train/ \(missing red\)"):
        resolve(image_folder)


def test_extra_class_in_a_split(image_folder, make_images):
    make_images(image_folder / "test" / "green", 2, "green")
    with pytest.raises(UserError, match="extra green"):
        resolve(image_folder)


def test_split_folders_without_train(image_folder):
    shutil.rmtree(image_folder / "train")
    with pytest.raises(UserError, match="no train/ folder"):
        resolve(image_folder)


@pytest.mark.parametrize("value", ["no/such/folder", "imagenet", "tfds"])
def test_unknown_data_value(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no such folder, and not a known dataset") as err:
        resolve(value)
    assert "\n" not in str(err.value)


def test_file_given_as_data(image_folder):
    path = next((image_folder / "train" / "red").iterdir())
    with pytest.raises(UserError, match="is a file"):
        resolve(path)


def test_folder_without_class_subfolders(tmp_path, make_images):
    make_images(tmp_path / "flat", 3, "red")
    with pytest.raises(UserError, match="no class subfolders"):
        resolve(tmp_path / "flat")


def test_single_class_refused_by_load_data(class_folder):
    from tfpipeline.data import load_data

    shutil.rmtree(class_folder / "blue")
    with pytest.raises(UserError, match="at least two classes"):
        load_data(DataConfig(data=str(class_folder)), scaling="unit")


# --------------------------------------------------------------------------- embedded


def test_embedded_faces():
    source = resolve("faces")
    assert source.kind == "embedded"
    assert source.class_names == ("background", "face")
    total = sum(len(s) for s in source.splits.values())
    assert total == 200
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 150, "val": 25, "test": 25}
    labels = np.concatenate([s.labels for s in source.splits.values()])
    assert np.bincount(labels).tolist() == [100, 100]
    images = source.splits["train"].images
    assert images.shape[1:] == (25, 25, 1) and images.dtype == np.uint8
    assert images.max() > 200


def test_embedded_digits():
    source = resolve("digits")
    assert source.class_names == tuple("0123456789")
    labels = np.concatenate([s.labels for s in source.splits.values()])
    assert len(labels) == 1797 and len(np.unique(labels)) == 10
    images = source.splits["val"].images
    assert images.shape[1:] == (8, 8, 1) and images.max() == 255


def test_embedded_class_selection():
    source = resolve("digits", classes=("7", "1"))
    assert source.class_names == ("7", "1")
    labels = np.concatenate([s.labels for s in source.splits.values()])
    assert np.bincount(labels).tolist() == [179, 182]  # sevens, ones


# --------------------------------------------------------------------------- tfds (mocked)


def test_tfds_mocked_carves_validation(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=120):
        source = resolve("tfds:mnist", tfds_data_dir=str(tmp_path))
        assert source.kind == "tfds"
        assert source.class_names == tuple(str(d) for d in range(10))
        assert set(source.splits) == {"train", "val", "test"}
        train, val = source.splits["train"], source.splits["val"]
        assert len(train) + len(val) == 120
        assert len(val) > 0 and len(source.splits["test"]) == 120
        # Carved splits still yield (image, label) pairs lining up with `labels`.
        pairs = list(val.dataset.as_numpy_iterator())
        assert [int(y) for _, y in pairs] == val.labels.tolist()
        assert pairs[0][0].shape == (28, 28, 1)


def test_tfds_not_prepared_says_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError) as err:
        resolve("tfds:mnist", tfds_data_dir=str(tmp_path))
    message = str(err.value)
    assert "no prepared data" in message and str(tmp_path) in message
    assert "--tfds-download" in message and "--tfds-data-dir" in message


def test_tfds_unknown_dataset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError, match="tfds:no_such_dataset_xyz"):
        resolve("tfds:no_such_dataset_xyz", tfds_data_dir=str(tmp_path))
    with pytest.raises(UserError, match="needs a dataset name"):
        resolve("tfds:")


def test_tfds_version_and_class_errors(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError, match="cannot be loaded at version 9.9.9"):
        resolve("tfds:mnist:9.9.9", tfds_data_dir=str(tmp_path))
    with pytest.raises(UserError, match="keep their own class order"):
        resolve("tfds:mnist", tfds_data_dir=str(tmp_path), classes=("1", "0"))
    with pytest.raises(UserError, match="cat not in tfds:mnist"):
        resolve("tfds:mnist", tfds_data_dir=str(tmp_path), classes=("cat",))


def test_only_local_folders_are_made_absolute(image_folder, monkeypatch):
    from tfpipeline.data.sources import with_absolute_folder

    monkeypatch.chdir(image_folder.parent)
    relative = DataConfig(data=image_folder.name)
    assert with_absolute_folder(relative).data == str(image_folder.resolve())
    for value in ("faces", "tfds:cifar10", "no/such/folder"):  # names, and errors left to resolve()
        assert with_absolute_folder(DataConfig(data=value)).data == value
