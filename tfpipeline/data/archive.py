"""`tfpipeline data extract`: unpack an image archive (tar, tar.gz, zip) into a scratch folder.

Datasets often arrive as one archive (CIFAR-10 here: `train.tar.gz` holding
`train/<class>/NNNN.jpg`). Extraction is safe (no member may land outside the destination; links,
devices and other special members are skipped), resumable (a marker per archive records what was
unpacked, so a second call with the same archive returns at once instead of failing or
re-extracting) and can take a deterministic sample of each folder for quick checks.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tfpipeline.errors import UserError

MARKER_DIR = ".tfpipeline-extracted"


@dataclass(frozen=True)
class Extracted:
    """What an archive put into the destination.

    Attributes:
        folders: the archive's top-level entries, as paths under the destination.
        files: regular files extracted (or found from an earlier extraction).
        skipped: members that were not regular files or folders (links, devices), by name.
        reused: True when an earlier extraction of the same archive was found and kept.
    """

    folders: tuple[Path, ...]
    files: int
    skipped: tuple[str, ...]
    reused: bool


def _members(archive: Path) -> tuple[list[tuple[str, bool]], list[str]]:
    """(name, is_dir) of every regular member, and the names of special members."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                return [(info.filename.rstrip("/"), info.is_dir()) for info in handle.infolist()], []
        with tarfile.open(archive) as handle:
            regular, special = [], []
            for member in handle.getmembers():
                if member.isfile() or member.isdir():
                    regular.append((member.name.rstrip("/"), member.isdir()))
                else:
                    special.append(member.name)
            return regular, special
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"cannot read archive {archive}: {exc}") from None


def _check_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UserError(f"archive {archive}: member '{name}' would be written outside the destination")
    return path


def _sample(files: list[str], per_folder: int | None) -> list[str]:
    """The first `per_folder` files (by name) of every folder; all files when None."""
    if per_folder is None:
        return files
    by_folder: dict[str, list[str]] = defaultdict(list)
    for name in sorted(files):
        by_folder[str(PurePosixPath(name).parent)].append(name)
    return [name for group in by_folder.values() for name in group[:per_folder]]


def _signature(archive: Path, per_folder: int | None) -> dict:
    stat = archive.stat()
    return {
        "archive": str(archive.resolve()),
        "bytes": stat.st_size,
        "mtime": stat.st_mtime,
        "per_folder": per_folder,
    }


def extract_archive(archive: str | Path, out: str | Path, *, per_folder: int | None = None) -> Extracted:
    """Extract `archive` into `out` (created if needed), safely and at most once.

    Args:
        archive: a .tar, .tar.gz/.tgz, .tar.bz2/.tar.xz or .zip file.
        out: destination folder; other archives may already have been extracted into it.
        per_folder: keep only the first N files (sorted by name) of each folder, e.g. a few
            images per class for a quick run; None keeps everything.

    Returns:
        What was extracted (or found from an identical earlier extraction).

    Raises:
        UserError: a missing or unreadable archive, a member that would escape `out`, or a
            top-level entry that already exists in `out` without being this archive's.
    """
    archive, out = Path(archive), Path(out)
    if not archive.is_file():
        raise UserError(f"archive not found: {archive}")
    if per_folder is not None and per_folder < 1:
        raise UserError(f"--per-folder must be at least 1, got {per_folder}")
    marker = out / MARKER_DIR / f"{archive.name}.json"
    signature = _signature(archive, per_folder)
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in signature} == signature:
            return Extracted(
                tuple(out / name for name in recorded["folders"]),
                recorded["files"],
                tuple(recorded["skipped"]),
                True,
            )
    members, special = _members(archive)
    names = [str(_check_name(name, archive)) for name, _ in members]
    files = _sample(
        [clean for (_, is_dir), clean in zip(members, names, strict=True) if not is_dir], per_folder
    )
    tops = sorted({PurePosixPath(name).parts[0] for name in names})
    for top in tops:
        if (out / top).exists() and not marker.is_file():
            raise UserError(
                f"cannot extract {archive}: {out / top} already exists; remove it or choose another folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    keep = set(files)
    # Unpack beside the destination and move the top-level entries in at the end, so an
    # interrupted extraction never leaves a half-filled class folder behind.
    with tempfile.TemporaryDirectory(dir=out, prefix=".partial-") as partial:
        _unpack(archive, Path(partial), keep)
        for top in tops:
            if (out / top).exists():
                shutil.rmtree(out / top)  # a different sample of the same archive, replaced
            if (Path(partial) / top).exists():
                (Path(partial) / top).rename(out / top)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(
        json.dumps({**signature, "folders": tops, "files": len(files), "skipped": special}, indent=1)
    )
    return Extracted(tuple(out / top for top in tops), len(files), tuple(special), False)


def _unpack(archive: Path, into: Path, keep: set[str]) -> None:
    """Write the regular files named in `keep` under `into`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                for info in handle.infolist():
                    if str(PurePosixPath(info.filename)) in keep:
                        target = into / info.filename
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with handle.open(info) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            return
        with tarfile.open(archive) as handle:
            chosen = [m for m in handle.getmembers() if m.isfile() and str(PurePosixPath(m.name)) in keep]
            handle.extractall(into, members=chosen, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {archive}: {exc}") from None
