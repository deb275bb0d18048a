"""`tfpipeline data synth-fakes`: real/fake twin folders for out-of-domain checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tfpipeline.cli import main
from tfpipeline.config import DataConfig
from tfpipeline.data.forgeries import write_synthetic_pairs
from tfpipeline.data.pipeline import decode_files
from tfpipeline.errors import UserError


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


@pytest.mark.parametrize("kind", ["self", "other"])
def test_every_real_gets_a_twin_changed_only_in_a_region(make_images, tmp_path, kind):
    reals = make_images(tmp_path / "reals", 6, "red", sizes=((40, 40), (48, 36)))
    manifest = write_synthetic_pairs(tmp_path / "reals", tmp_path / "out", kind=kind, size=(32, 32), seed=3)
    assert manifest["pairs"] == 6 and manifest["kind"] == kind
    assert json.loads((tmp_path / "out" / "synth.json").read_text()) == manifest
    for path in reals:
        real = pixels(tmp_path / "out" / "real" / f"{path.stem}.png")
        fake = pixels(tmp_path / "out" / "fake" / f"{path.stem}.png")
        assert real.shape == fake.shape == (32, 32, 3)
        changed = np.any(real != fake, axis=-1)
        assert 0 < changed.mean() < 0.8  # a blended region, never the whole face
    # The reals are exactly the training decoder's pixels, stored losslessly like the fakes.
    decoded = decode_files([str(reals[0])], DataConfig(data="reals", image_size=(32, 32)))[0]
    np.testing.assert_array_equal(pixels(tmp_path / "out" / "real" / f"{reals[0].stem}.png"), decoded)
    assert 0 < manifest["changed_pixel_share"] < 0.8


def test_the_same_seed_writes_the_same_fakes(make_images, tmp_path):
    make_images(tmp_path / "reals", 4, "blue")
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_synthetic_pairs(tmp_path / "reals", tmp_path / name, size=(24, 24), seed=seed)
    fakes = {
        name: np.stack([pixels(p) for p in sorted((tmp_path / name / "fake").iterdir())]) for name in "abc"
    }
    np.testing.assert_array_equal(fakes["a"], fakes["b"])
    assert np.any(fakes["a"] != fakes["c"])


def test_bad_input_is_refused_with_the_path(make_images, tmp_path):
    with pytest.raises(UserError, match="missing"):
        write_synthetic_pairs(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        write_synthetic_pairs(tmp_path / "empty", tmp_path / "out")
    make_images(tmp_path / "reals", 2, "red")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("the user's file")
    with pytest.raises(UserError, match="used is not empty"):
        write_synthetic_pairs(tmp_path / "reals", tmp_path / "used")
    with pytest.raises(UserError, match="unknown --kind 'swap'"):
        write_synthetic_pairs(tmp_path / "reals", tmp_path / "out", kind="swap")
    Image.new("RGB", (8, 8)).save(tmp_path / "reals" / "red_000.bmp")  # red_000.jpg is there too
    with pytest.raises(UserError, match="red_000.png"):
        write_synthetic_pairs(tmp_path / "reals", tmp_path / "out")


def test_cli_writes_the_pairs_and_refuses_a_used_folder(make_images, tmp_path, capsys):
    make_images(tmp_path / "reals", 3, "red")
    code = main(["data", "synth-fakes", str(tmp_path / "reals"), str(tmp_path / "out"), "--image-size", "16"])
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote 3 real/fake pairs" in out and "--split all --data" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fake", "real", "synth.json"]
    assert main(["data", "synth-fakes", str(tmp_path / "reals"), str(tmp_path / "out")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
