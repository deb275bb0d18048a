"""`tfpipeline data extract`: safe, once-only archive extraction with per-folder sampling."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tfpipeline.cli import main
from tfpipeline.data.archive import extract_archive
from tfpipeline.errors import UserError


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _tar(path: Path, class_folder: Path, prefix: str = "train") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(class_folder, arcname=prefix)
    return path


def test_extracts_every_file_once_and_reuses_it(class_folder, tmp_path, capsys):
    archive = _tar(tmp_path / "train.tar.gz", class_folder)
    out = tmp_path / "scratch"
    first = extract_archive(archive, out)
    expected = sorted(p.relative_to(class_folder) for p in _files(class_folder))
    assert sorted(p.relative_to(out / "train") for p in _files(out / "train")) == expected
    assert first.files == len(expected) and first.folders == (out / "train",) and not first.reused
    # Same archive again: nothing rewritten, a clear "already" in the command's output.
    stamp = _files(out / "train")[0].stat().st_mtime_ns
    assert main(["data", "extract", str(archive), str(out)]) == 0
    assert "already extracted" in capsys.readouterr().out
    assert _files(out / "train")[0].stat().st_mtime_ns == stamp
    # A second archive may share the destination.
    extract_archive(_tar(tmp_path / "test.tar.gz", class_folder, "test"), out)
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"train", "test"}


def test_per_folder_keeps_the_first_files_of_each_class(class_folder, tmp_path):
    archive = _tar(tmp_path / "train.tar.gz", class_folder)
    done = extract_archive(archive, tmp_path / "out", per_folder=3)
    for cls in ("blue", "red"):
        kept = sorted(p.name for p in (tmp_path / "out/train" / cls).iterdir())
        assert kept == sorted(p.name for p in (class_folder / cls).iterdir())[:3]
    assert done.files == 6
    # Asking for everything afterwards replaces the sample instead of refusing.
    assert extract_archive(archive, tmp_path / "out").files == 24


def test_zip_archives_extract_too(class_folder, tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for image in _files(class_folder):
            archive.write(image, f"imgs/{image.relative_to(class_folder)}")
    assert extract_archive(path, tmp_path / "out").files == 24
    assert len(list((tmp_path / "out/imgs/red").iterdir())) == 12


def test_members_escaping_the_destination_are_refused(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        data = b"x"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match=r"'../outside.txt' would be written outside"):
        extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_links_are_skipped_and_reported(class_folder, tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(class_folder / "red", arcname="d/red")
        link = tarfile.TarInfo("d/red/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    done = extract_archive(path, tmp_path / "out")
    assert done.skipped == ("d/red/link.png",) and not (tmp_path / "out/d/red/link.png").exists()


def test_bad_archives_and_existing_folders_give_clear_errors(class_folder, tmp_path, capsys):
    assert main(["data", "extract", str(tmp_path / "none.tar.gz"), str(tmp_path / "o")]) == 2
    assert "archive not found" in capsys.readouterr().err
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot read archive .*broken.tar.gz"):
        extract_archive(broken, tmp_path / "o")
    (tmp_path / "o/train").mkdir(parents=True)
    with pytest.raises(UserError, match="o/train already exists"):
        extract_archive(_tar(tmp_path / "t.tar.gz", class_folder), tmp_path / "o")
    with pytest.raises(UserError, match="--per-folder must be at least 1"):
        extract_archive(tmp_path / "t.tar.gz", tmp_path / "p", per_folder=0)
