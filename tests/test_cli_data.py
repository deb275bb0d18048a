"""`tfpipeline data check|explore|split`, run in-process: exit codes, messages, files written."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tfpipeline.cli import main


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `tfpipeline ARGV`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("sub", ["check", "explore", "split"])
def test_help(capsys, sub):
    with pytest.raises(SystemExit) as exit_:
        main(["data", sub, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tfpipeline data {sub}")


def test_data_without_subcommand_prints_help(capsys):
    code, out, _ = run(capsys, "data")
    assert code == 2 and "check" in out and "explore" in out and "split" in out


# --------------------------------------------------------------------------- check


def test_check_clean_folder(capsys, image_folder):
    code, out, err = run(capsys, "data", "check", image_folder)
    assert code == 0, err
    assert out.startswith("checked 24 files (0 unchanged since the last check): 0 bad, 0 unusual")
    code, out, _ = run(capsys, "data", "check", image_folder)
    assert code == 0 and "(24 unchanged since the last check)" in out


def test_check_bad_files_exit_1(capsys, image_folder, add_bad_file):
    text = add_bad_file(image_folder / "train" / "red", "text")
    empty = add_bad_file(image_folder / "test" / "blue", "zero-byte")
    rgba = add_bad_file(image_folder / "val" / "blue", "rgba")
    code, out, _ = run(capsys, "data", "check", image_folder, "--image-size", "32")
    assert code == 1
    assert "2 bad, 1 unusual" in out
    assert f"{text}: not an image" in out and f"{empty}: empty file" in out
    assert f"{rgba}: has transparency" in out


def test_check_unusual_only_exit_0(capsys, image_folder, add_bad_file):
    add_bad_file(image_folder / "train" / "red", "animated")
    (image_folder / "train" / "red" / "readme.txt").write_text("hi")
    code, out, _ = run(capsys, "data", "check", image_folder, "--grayscale")
    assert code == 0
    assert "animated (first frame used)" in out
    assert f"ignored (unsupported extension): {image_folder / 'train' / 'red' / 'readme.txt'}" in out


def test_check_embedded(capsys):
    code, out, _ = run(capsys, "data", "check", "digits")
    assert code == 0 and "in-memory data (1797 images)" in out


def test_check_class_layout_with_options(capsys, class_folder):
    code, out, _ = run(
        capsys, "data", "check", class_folder, "--seed", "3", "--split-ratios", "0.5,0.25,0.25"
    )
    assert code == 0 and "checked 24 files" in out


# --------------------------------------------------------------------------- user errors


def test_unknown_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "data", "check", "nowhere")
    assert_user_error(code, err, "--data nowhere: no such folder")


def test_file_as_data(capsys, image_folder):
    path = next((image_folder / "train" / "blue").iterdir())
    assert_user_error(*run(capsys, "data", "explore", path)[::2], "is a file")


def test_empty_class_folder(capsys, class_folder):
    (class_folder / "green").mkdir()
    assert_user_error(*run(capsys, "data", "check", class_folder)[::2], "green: class folder has no images")


def test_class_missing_from_split(capsys, image_folder):
    shutil.rmtree(image_folder / "test" / "blue")
    assert_user_error(*run(capsys, "data", "check", image_folder)[::2], "missing blue")


def test_unknown_class(capsys, image_folder):
    assert_user_error(*run(capsys, "data", "check", image_folder, "--classes", "red,pink")[::2], "pink")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--image-size", "big"], "--image-size"),
        (["--resize", "squash"], "--resize"),
        (["--split-ratios", "0.5,0.5"], "--split-ratios"),
        (["--seed", "x"], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--positive-class", "green"], "--positive-class"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags(capsys, image_folder, flags, fragment):
    command = "explore" if "--positive-class" in flags else "check"
    assert_user_error(*run(capsys, "data", command, image_folder, *flags)[::2], fragment)


def test_debug_shows_traceback(image_folder):
    shutil.rmtree(image_folder / "test" / "blue")
    from tfpipeline.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "data", "check", str(image_folder)])


# --------------------------------------------------------------------------- explore


def test_explore(capsys, image_folder, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "data", "explore", image_folder, "--out", out_dir)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["train", "val", "test", "total"]
    assert "imbalance ratio (train): 1.0" in out
    assert "positive class: red  prior (train share): 0.5" in out
    assert "leakage across splits: 0 group(s)" in out
    assert f"report written to {out_dir / 'report.md'}" in out
    assert {p.name for p in out_dir.iterdir()} == {
        "report.md",
        "report.json",
        "samples_overview.png",
        "samples_blue.png",
        "samples_red.png",
    }
    assert json.loads((out_dir / "report.json").read_text())["classes"] == ["blue", "red"]


def test_explore_reports_leak_and_bad_files(capsys, image_folder, add_bad_file):
    source = next((image_folder / "train" / "red").iterdir())
    shutil.copy(source, image_folder / "val" / "red" / "leak.jpg")
    bad = add_bad_file(image_folder / "train" / "blue", "truncated")
    code, out, _ = run(capsys, "data", "explore", image_folder)
    assert code == 0
    assert "leakage across splits: 1 group(s)" in out and f"train: {source}" in out
    assert f"bad files: 1 (run `tfpipeline data check` for details): {bad}" in out


# --------------------------------------------------------------------------- split


def tree(root) -> dict[str, int]:
    return {
        f"{split.name}/{cls.name}": len(list(cls.iterdir()))
        for split in sorted(root.iterdir())
        for cls in sorted(split.iterdir())
    }


def test_split_copies(capsys, class_folder, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "data", "split", class_folder, out)
    assert code == 0, err
    counts = tree(out)
    assert counts["train/blue"] == counts["train/red"] == 9
    assert counts["val/blue"] + counts["val/red"] == 3 and counts["test/blue"] + counts["test/red"] == 3
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not any(p.is_symlink() for p in files)
    assert '"train": 18' in stdout and "(copies)" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    # The written layout resolves as a split-folder dataset with the same split.
    code, check_out, _ = run(capsys, "data", "check", out)
    assert code == 0 and "checked 24 files" in check_out


def test_split_matches_resolved_split(capsys, class_folder, tmp_path):
    from tfpipeline.config import DataConfig
    from tfpipeline.data import resolve_source

    out = tmp_path / "out"
    assert run(capsys, "data", "split", class_folder, out, "--seed", "9", "--ratios", "0.5,0.25,0.25")[0] == 0
    source = resolve_source(DataConfig(data=str(class_folder), seed=9, split_ratios=(0.5, 0.25, 0.25)))
    for name, split in source.splits.items():
        written = sorted(p.name for p in (out / name).rglob("*.*"))
        assert written == sorted(os.path.basename(p) for p in split.paths)


def test_split_links(capsys, class_folder, tmp_path):
    out = tmp_path / "linked"
    code, stdout, _ = run(capsys, "data", "split", class_folder, out, "--link")
    assert code == 0 and "(symlinks)" in stdout
    links = [p for p in out.rglob("*.*")]
    assert len(links) == 24 and all(p.is_symlink() for p in links)
    for link in links:
        target = os.readlink(link)
        assert os.path.isabs(target) and target.startswith(str(class_folder.resolve()))
        assert link.parent.name == os.path.basename(os.path.dirname(target))


def test_split_selected_classes(capsys, class_folder, tmp_path, make_images):
    make_images(class_folder / "green", 12, "green")
    code, _, _ = run(capsys, "data", "split", class_folder, tmp_path / "out", "--classes", "red, green")
    assert code == 0
    assert {p.name for p in (tmp_path / "out" / "train").iterdir()} == {"red", "green"}


def test_split_into_empty_existing_folder(capsys, class_folder, tmp_path):
    (tmp_path / "out").mkdir()
    assert run(capsys, "data", "split", class_folder, tmp_path / "out")[0] == 0


def test_split_refuses_non_empty_out(capsys, class_folder, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_user_error(*run(capsys, "data", "split", class_folder, tmp_path / "out")[::2], "not empty")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_split_refuses_out_inside_src(capsys, class_folder):
    code, _, err = run(capsys, "data", "split", class_folder, class_folder / "split")
    assert_user_error(code, err, "inside")
    assert not (class_folder / "split").exists()


def test_split_refuses_split_layout_and_linking_memory(capsys, image_folder, tmp_path):
    assert_user_error(*run(capsys, "data", "split", image_folder, tmp_path / "o")[::2], "already split")
    assert_user_error(*run(capsys, "data", "split", "faces", tmp_path / "o", "--link")[::2], "faces")
    assert not (tmp_path / "o").exists()


def test_split_writes_embedded_data_as_pngs_that_read_back_identically(capsys, tmp_path):
    from tfpipeline.config import DataConfig
    from tfpipeline.data import resolve_source

    out = tmp_path / "digits"
    code, stdout, _ = run(capsys, "data", "split", "digits", out, "--ratios", "0.8,0.2,0")
    assert code == 0 and '"train": 1437' in stdout
    memory = resolve_source(DataConfig(data="digits", split_ratios=(0.8, 0.2, 0.0)))
    files = resolve_source(DataConfig(data=str(out)))
    assert files.class_names == memory.class_names == tuple("0123456789")
    for name in ("train", "val"):
        assert (
            np.bincount(files.splits[name].labels).tolist()
            == np.bincount(memory.splits[name].labels).tolist()
        )
    first = sorted((out / "val" / "3").iterdir())[0]
    index = int(first.stem)
    assert memory.splits["val"].labels[index] == 3
    np.testing.assert_array_equal(np.asarray(Image.open(first)), memory.splits["val"].images[index][..., 0])
