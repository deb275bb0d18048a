"""`data explore`: counts, prior, sizes, channel statistics, duplicates, leakage, report files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SIZES
from PIL import Image

from tfpipeline.config import DataConfig
from tfpipeline.data import resolve_source
from tfpipeline.data.explore import explore


def run(data, out=None, **options):
    config = DataConfig(data=str(data), **options)
    return explore(resolve_source(config), config, out)


def test_report_numbers(image_folder):
    report = run(image_folder)
    assert report["layout"] == "folder" and report["classes"] == ["blue", "red"]
    assert report["counts"]["blue"] == {"train": 8, "val": 2, "test": 2, "total": 12}
    assert report["counts"]["total"] == {"train": 16, "val": 4, "test": 4, "total": 24}
    assert report["imbalance_ratio"] == 1.0
    assert report["positive_class"] == "red" and report["positive_prior"] == 0.5
    assert report["distinct_image_sizes"] == len(SIZES)
    assert set(report["image_sizes"]) == {f"{w}x{h}" for w, h in SIZES}
    assert report["modes"] == {"JPEG RGB": 12, "PNG RGB": 12}
    red, green, blue = report["channel_mean"]
    assert 0.3 < red < 0.6 and 0.3 < blue < 0.6 and green < 0.4
    assert all(0.05 < s < 0.5 for s in report["channel_std"])
    assert report["duplicates_within_splits"] == [] and report["leakage_across_splits"] == []
    lines = report["table"].splitlines()
    assert lines[0].split() == ["train", "val", "test", "total"]
    assert lines[-1].split() == ["total", "16", "4", "4", "24"]


def test_imbalance_and_prior(class_folder):
    for path in sorted((class_folder / "blue").iterdir())[:4]:
        path.unlink()
    report = run(class_folder, positive_class="blue")
    train = report["counts"]
    assert report["imbalance_ratio"] == round(train["red"]["train"] / train["blue"]["train"], 3) > 1
    assert report["positive_class"] == "blue"
    assert report["positive_prior"] == round(train["blue"]["train"] / train["total"]["train"], 4)


def test_duplicates_and_cross_split_leakage(image_folder):
    source = sorted((image_folder / "train" / "red").iterdir())[0]
    shutil.copy(source, image_folder / "test" / "red" / "leaked.jpg")
    shutil.copy(source, image_folder / "val" / "red" / "leaked_too.jpg")
    other = sorted((image_folder / "train" / "blue").iterdir())[1]
    shutil.copy(other, image_folder / "train" / "blue" / "copy.png")
    report = run(image_folder)
    [leak] = report["leakage_across_splits"]
    assert sorted(leak) == sorted(
        [
            f"train: {source}",
            f"val: {image_folder / 'val' / 'red' / 'leaked_too.jpg'}",
            f"test: {image_folder / 'test' / 'red' / 'leaked.jpg'}",
        ]
    )
    [dupe] = report["duplicates_within_splits"]
    assert sorted(dupe) == sorted(
        [f"train: {other}", f"train: {image_folder / 'train' / 'blue' / 'copy.png'}"]
    )


def test_report_files_and_sample_grids(image_folder, tmp_path):
    out = tmp_path / "report"
    report = run(image_folder, out)
    assert report["sample_grids"] == ["samples_blue.png", "samples_red.png"]
    assert report["sample_overview"] == "samples_overview.png"
    for name in report["sample_grids"]:
        with Image.open(out / name) as grid:
            assert grid.format == "PNG" and grid.width > 300 and grid.height > 300
            pixels = np.asarray(grid.convert("RGB"), dtype=float)
            assert pixels.std() > 10  # not a blank figure
    with Image.open(out / report["sample_overview"]) as overview:  # one row of samples per class
        assert overview.format == "PNG" and overview.width > 2 * overview.height > 300
        assert np.asarray(overview.convert("RGB"), dtype=float).std() > 10
    saved = json.loads((out / "report.json").read_text())
    assert saved["counts"] == report["counts"] and "table" not in saved
    markdown = (out / "report.md").read_text()
    assert (
        "| blue" in markdown and "Leakage" in markdown and "![samples_red.png](samples_red.png)" in markdown
    )
    assert markdown.index("![samples_overview.png]") < markdown.index("![samples_blue.png]")
    assert "positive class `red`" in markdown.lower()


def test_grids_need_only_a_few_images_and_odd_names(tmp_path, make_images):
    make_images(tmp_path / "data" / "a b", 4, "red")
    make_images(tmp_path / "data" / "c/d".replace("/", "_"), 4, "blue")
    report = run(tmp_path / "data", tmp_path / "out", split_ratios=(0.5, 0.5, 0.0))
    assert report["sample_grids"] == ["samples_a_b.png", "samples_c_d.png"]
    assert all((tmp_path / "out" / g).stat().st_size > 0 for g in report["sample_grids"])


def test_bad_files_do_not_break_explore(image_folder, add_bad_file, tmp_path):
    kinds = ("text", "truncated", "broken-link", "huge")
    bad = [str(add_bad_file(image_folder / "train" / "red", k)) for k in kinds]
    add_bad_file(image_folder / "val" / "blue", "cmyk")
    report = run(image_folder, tmp_path / "out")
    assert report["modes"]["unreadable"] == 3
    assert report["bad_files"] == sorted(bad)
    assert report["unusual_files"] == {"cmyk": 1}
    assert len(report["channel_mean"]) == 3


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_embedded_data(tmp_path, color_mode):
    report = run("faces", tmp_path / color_mode, color_mode=color_mode)
    assert report["counts"]["total"]["total"] == 200
    assert report["modes"] == {"array L": 200} and report["image_sizes"] == {"25x25": 200}
    assert len(report["channel_mean"]) == (1 if color_mode == "grayscale" else 3)
    assert report["positive_class"] == "face"
    assert (tmp_path / color_mode / "samples_face.png").exists()


def test_explore_checks_files_without_filling_the_pixel_cache(image_folder, tmp_path, monkeypatch):
    # Filling it would hold every image decoded at the training size in memory (CIFAR-10's
    # 50,000 images at the default 224 px: 7.5 GB) for a command that trains nothing.
    import tfpipeline.data as data_module

    fills = []
    original = data_module.check_files

    def spying(*args, **kwargs):
        fills.append(kwargs.get("fill"))
        return original(*args, **kwargs)

    monkeypatch.setattr(data_module, "check_files", spying)
    run(image_folder, tmp_path / "report")
    assert fills == [None]
