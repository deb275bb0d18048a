"""The bad-file check: every kind of bad or unusual file, caching, and what training does."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import BAD_FILES, FATAL_BAD_FILES, _raw_png
from PIL import Image

from tfpipeline.config import DataConfig
from tfpipeline.data import check_source, load_data, resolve_source
from tfpipeline.data.check import check_files
from tfpipeline.errors import UserError


def files_in(folder) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def mixed_folder(tmp_path, make_images, add_bad_file):
    """Three good images plus one file of every BAD_FILES kind; returns (folder, {kind: path})."""
    folder = tmp_path / "mixed"
    make_images(folder, 3, "red")
    return folder, {kind: str(add_bad_file(folder, kind)) for kind in BAD_FILES}


def test_every_kind_detected_with_its_path(mixed_folder):
    folder, bad = mixed_folder
    report = check_files(files_in(folder), channels=3, target_hw=(32, 32))
    assert report.checked == 3 + len(BAD_FILES)
    found = {}
    for problem in report.problems:
        found.setdefault(problem.path, set()).add(problem.kind)
    for kind, path in bad.items():
        assert BAD_FILES[kind] in found.get(path, set()), f"{kind}: {found.get(path)}"
    assert set(found) == set(bad.values())  # good images have no findings
    assert report.bad_paths == {bad[k] for k in FATAL_BAD_FILES}
    assert {p.path for p in report.warnings} == set(bad.values()) - report.bad_paths


def test_report_lists_bad_before_unusual(mixed_folder):
    folder, bad = mixed_folder
    text = check_files(files_in(folder)).format()
    first_line = text.splitlines()[0]
    assert f"checked {3 + len(BAD_FILES)} files" in first_line
    assert f"{len(FATAL_BAD_FILES)} bad, {len(BAD_FILES) - len(FATAL_BAD_FILES)} unusual" in first_line
    assert text.index("bad (cannot be used):") < text.index("unusual (usable):")
    for path in bad.values():
        assert path in text
    assert "... and" in check_files(files_in(folder)).format(limit=1)


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (12_000, 12_000), (40_000, 8)])
def test_absurd_dimensions(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_raw_png(width, height, 8, 0, b"\0" * 64))
    [problem] = check_files([str(path)]).problems
    assert problem.kind == "too-large" and problem.fatal
    assert "x" in problem.detail


def test_png_saved_as_jpg_is_fine(tmp_path, make_images):
    [png] = make_images(tmp_path, 1, "red", formats=("png",))
    renamed = png.rename(png.with_suffix(".jpg"))
    assert check_files([str(renamed)]).problems == ()


def test_valid_variant_tensorflow_cannot_decode(tmp_path):
    path = tmp_path / "bilevel.bmp"
    Image.fromarray(np.eye(16, dtype=bool)).save(path)  # 1-bit BMP: Pillow reads it, TF cannot
    [problem] = check_files([str(path)]).problems
    assert problem.kind == "unsupported-format" and problem.fatal and "BMP 1" in problem.detail


def test_grayscale_check_decodes_with_one_channel(mixed_folder):
    folder, bad = mixed_folder
    report = check_files(files_in(folder), channels=1, target_hw=(16, 16))
    assert report.bad_paths == {bad[k] for k in FATAL_BAD_FILES}


# --------------------------------------------------------------------------- cache


def test_cache_reuse_and_recheck_of_modified_files(tmp_path, make_images, _isolated_cache):
    paths = [str(p) for p in make_images(tmp_path / "imgs", 4, "blue")]
    first = check_files(paths)
    assert first.from_cache == 0 and first.problems == ()
    assert list(_isolated_cache.rglob("*.json"))  # the cache lives under TFPIPELINE_CACHE_DIR
    second = check_files(paths)
    assert second.from_cache == 4 and second.problems == ()
    # Break one file; same size and mtime would be trusted, so change both like an editor would.
    with open(paths[1], "r+b") as handle:
        handle.truncate(os.path.getsize(paths[1]) // 2)
    third = check_files(paths)
    assert third.from_cache == 3
    assert third.bad_paths == {paths[1]}
    assert check_files(paths).from_cache == 4  # bad results are cached too
    assert check_files(paths).bad_paths == {paths[1]}


def test_cache_keyed_by_decode_settings(tmp_path, make_images):
    paths = [str(p) for p in make_images(tmp_path / "imgs", 2, "blue")]
    check_files(paths, channels=3, target_hw=(32, 32))
    assert check_files(paths, channels=1, target_hw=(32, 32)).from_cache == 0
    assert check_files(paths, channels=3, target_hw=(32, 32)).from_cache == 2


def test_damaged_cache_is_ignored(tmp_path, make_images, _isolated_cache):
    paths = [str(p) for p in make_images(tmp_path / "imgs", 2, "blue")]
    check_files(paths)
    for cache_file in _isolated_cache.rglob("*.json"):
        cache_file.write_text("{not json")
    report = check_files(paths)
    assert report.from_cache == 0 and report.problems == ()


# --------------------------------------------------------------------------- training load


def test_load_data_refuses_bad_files_listing_them(image_folder, add_bad_file):
    text = str(add_bad_file(image_folder / "train" / "red", "text"))
    empty = str(add_bad_file(image_folder / "val" / "blue", "zero-byte"))
    add_bad_file(image_folder / "train" / "blue", "rgba")  # unusual only: no reason to refuse
    with pytest.raises(UserError) as err:
        load_data(DataConfig(data=str(image_folder), image_size=(24, 24)), scaling="unit")
    message = str(err.value)
    assert message.startswith("2 bad image file(s)")
    assert "--skip-bad" in message and text in message and empty in message
    assert "bad_rgba" not in message.split("unusual")[0]


def test_skip_bad_drops_and_counts(image_folder, add_bad_file):
    bad = {str(add_bad_file(image_folder / "train" / "red", k)) for k in ("text", "truncated")}
    add_bad_file(image_folder / "test" / "blue", "cmyk")
    config = DataConfig(data=str(image_folder), image_size=(24, 24), batch_size=64, skip_bad=True)
    bundle = load_data(config, scaling="unit")
    assert set(bundle.info.skipped_bad) == bad
    assert bundle.info.summary()["skipped_bad"] == 2
    assert bundle.info.counts["train"] == {"blue": 8, "red": 8}
    assert bundle.info.counts["test"] == {"blue": 3, "red": 2}  # the CMYK file is usable
    assert not bad & {p for p, _ in bundle.info.files["train"]}
    images, labels = next(iter(bundle.train))
    assert images.shape == (16, 24, 24, 3) and labels.shape == (16, 1)
    assert len(next(iter(bundle.test))[0]) == 5


def test_skip_bad_with_a_whole_split_bad(image_folder, add_bad_file):
    for cls in ("blue", "red"):
        shutil.rmtree(image_folder / "val" / cls)
        add_bad_file(image_folder / "val" / cls, "text")
    config = DataConfig(data=str(image_folder), skip_bad=True)
    with pytest.raises(UserError, match="every image of the val split is bad"):
        load_data(config, scaling="unit")


def test_load_data_info(image_folder):
    bundle = load_data(DataConfig(data=str(image_folder), image_size=(24, 24)), scaling="unit")
    info = bundle.info
    assert info.source == "folder" and info.class_names == ("blue", "red")
    assert info.positive_class == "red" and info.positive_index == 1 and info.train_prior == 0.5
    assert info.counts == {s: {"blue": n, "red": n} for s, n in (("train", 8), ("val", 2), ("test", 2))}
    assert len(info.files["train"]) == 16 and info.skipped_bad == ()
    assert bundle.test is not None and info.num_classes == 2


def test_check_source_skips_in_memory_data():
    config = DataConfig(data="faces")
    assert check_source(resolve_source(config), config) is None
    bundle = load_data(config, scaling="unit", label_mode="categorical")
    assert bundle.info.files == {} and bundle.info.counts["train"] == {"background": 75, "face": 75}
    assert np.asarray(next(iter(bundle.val))[1]).shape[-1] == 2
