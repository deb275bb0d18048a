"""`tfpipeline data split`: write a stratified split out as a train/val/test folder layout.

Folder datasets are copied (or linked) file by file; in-memory datasets (the embedded demo
data, TensorFlow Datasets) are written as PNG files, so any source can become a folder that
other tools, or `tfpipeline predict`, can read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tfpipeline.data.split import DataSource
from tfpipeline.errors import UserError


def materialize_split(source: DataSource, out: str | Path, *, link: bool = False) -> dict[str, int]:
    """Copy (or symlink) each split's files to `out/<split>/<class>/`; write in-memory images
    as `NNNNN.png`.

    The layout is written to a temporary sibling folder and renamed into place at the end, so
    an interrupted run never leaves a half-written split behind.

    Args:
        source: any data source (file paths, in-memory arrays or a TFDS dataset).
        out: destination; must not exist yet (or be an empty folder).
        link: create absolute symlinks instead of copies (file sources only).

    Returns:
        Number of files written per split.

    Raises:
        UserError: `link` for an in-memory source, or an existing, non-empty destination.
    """
    in_memory = any(not split.from_files for split in source.splits.values())
    if link and in_memory:
        raise UserError(f"data split: --link needs image files; '{source.location}' is held in memory")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"data split: {out} already exists and is not empty")
    if not in_memory and out.resolve().is_relative_to(Path(source.location).resolve()):
        raise UserError(f"data split: {out} is inside {source.location}; its folders would become classes")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    written = {}
    try:
        for split_name, split in source.splits.items():
            if not split.from_files:
                written[split_name] = _write_pngs(split, staging / split_name, source.class_names)
                continue
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


def _write_pngs(split, folder: Path, class_names: tuple[str, ...]) -> int:
    """Write an in-memory split's images as `<class>/NNNNN.png` (numbered within the split)."""
    import numpy as np
    from PIL import Image

    images = (
        split.images
        if split.images is not None
        else (np.asarray(x) for x, _ in split.dataset.as_numpy_iterator())
    )
    count = 0
    for index, (image, label) in enumerate(zip(images, split.labels, strict=True)):
        target = folder / class_names[int(label)] / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(target)
        count += 1
    return count


def _unique_name(path: str, used: set[str]) -> str:
    """The file's own name, suffixed when files from nested subfolders share a name."""
    name = Path(path).name
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while name in used:
        name = f"{stem}-{n}{suffix}"
        n += 1
    used.add(name)
    return name
