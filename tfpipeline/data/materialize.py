"""`tfpipeline data split`: write a stratified split out as a train/val/test folder layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tfpipeline.data.split import DataSource
from tfpipeline.errors import UserError


def materialize_split(source: DataSource, out: str | Path, *, link: bool = False) -> dict[str, int]:
    """Copy (or symlink) each split's files to `out/<split>/<class>/`.

    The layout is written to a temporary sibling folder and renamed into place at the end, so
    an interrupted run never leaves a half-written split behind.

    Args:
        source: a folder source (its splits hold file paths).
        out: destination; must not exist yet (or be an empty folder).
        link: create absolute symlinks instead of copies.

    Returns:
        Number of files written per split.

    Raises:
        UserError: for non-folder sources or an existing, non-empty destination.
    """
    if any(not split.from_files for split in source.splits.values()):
        raise UserError(f"data split: '{source.location}' is not an image folder; nothing to write")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"data split: {out} already exists and is not empty")
    if out.resolve().is_relative_to(Path(source.location).resolve()):
        raise UserError(f"data split: {out} is inside {source.location}; its folders would become classes")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    written = {}
    try:
        for split_name, split in source.splits.items():
            used: dict[int, set[str]] = {}  # names taken per class folder
            for path, label in zip(split.paths, split.labels, strict=True):
                name = _unique_name(path, used.setdefault(int(label), set()))
                target = staging / split_name / source.class_names[label] / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if link:
                    target.symlink_to(Path(path).resolve())
                else:
                    shutil.copy2(path, target)
            written[split_name] = len(split)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _unique_name(path: str, used: set[str]) -> str:
    """The file's own name, suffixed when files from nested subfolders share a name."""
    name = Path(path).name
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while name in used:
        name = f"{stem}-{n}{suffix}"
        n += 1
    used.add(name)
    return name
