"""Shared test fixtures: tiny generated image folders, bad files, and an isolated cache.

Fixtures for any test that needs images on disk (data, training, export tests):

- ``image_folder`` -> Path of a fresh split layout ``train/ val/ test/``, each with class
  subfolders ``blue/`` and ``red/`` (8 / 2 / 2 images per class). Images are 32-64 px, some
  non-square, JPEG and PNG mixed; ``blue`` images are bluish with horizontal stripes, ``red``
  images reddish with vertical stripes, so a model can tell them apart in a few steps.
- ``class_folder`` -> Path of a fresh class-only layout ``blue/ red/`` (12 images each), which
  tfpipeline splits 0.75/0.125/0.125 itself.
- ``make_images`` -> ``make_images(folder, n, cls="red", start=0, formats=("jpg", "png"))``
  writes `n` more images of a class into `folder` (created if needed); returns their paths.
- ``add_bad_file`` -> ``add_bad_file(folder, kind, name=None)`` writes one bad or unusual file
  of `kind` (a key of ``BAD_FILES``) into `folder` and returns its path.

Both folders are function-scoped (generated per test in well under 0.1 s), so a test may add,
delete or modify files freely. ``_isolated_cache`` (autouse) points ``TFPIPELINE_CACHE_DIR`` at
a per-test temporary folder so tests never read or write ``~/.cache/tfpipeline``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("blue", "red")
SPLIT_COUNTS = {"train": 8, "val": 2, "test": 2}
CLASS_ONLY_COUNT = 12
SIZES = ((32, 32), (48, 40), (64, 48), (40, 64))  # (width, height)

# bad-file kind -> the kind `tfpipeline.data.check` must report for it
BAD_FILES = {
    "zero-byte": "zero-byte",
    "text": "not-an-image",
    "truncated": "corrupt",
    "huge": "too-large",
    "broken-link": "unreadable",
    "cmyk": "cmyk",
    "rgba": "alpha",
    "16-bit": "16-bit",
    "16-bit-rgb": "16-bit",
    "palette": "palette",
    "animated": "animated",
}
FATAL_BAD_FILES = ("zero-byte", "text", "truncated", "huge", "broken-link")


def class_image(cls: str, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A deterministic, unique uint8 RGB image of class `cls` (size (width, height))."""
    width, height = size or SIZES[index % len(SIZES)]
    rng = np.random.default_rng(1000 * CLASSES.index(cls) + index if cls in CLASSES else index)
    period = 4 + index % 5
    if cls == "red":
        stripes = (np.arange(width) // period % 2)[None, :].repeat(height, 0)
        base = np.array([200, 40 + 3 * index, 30], np.float32)
    else:
        stripes = (np.arange(height) // period % 2)[:, None].repeat(width, 1)
        base = np.array([30, 60 + 3 * index, 200], np.float32)
    image = base + 40.0 * stripes[..., None] + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(folder: Path, n: int, cls: str, start: int = 0, formats=("jpg", "png")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"{cls}_{i:03d}.{formats[i % len(formats)]}"
        options = {"quality": 95} if path.suffix == ".jpg" else {}
        Image.fromarray(class_image(cls, i)).save(path, **options)
        paths.append(path)
    return paths


@pytest.fixture
def make_images() -> Callable[..., list[Path]]:
    """Factory writing `n` more class images into a folder; see the module docstring."""
    return _write_images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Split layout: ``train|val|test / blue|red /`` with 8/2/2 images per class."""
    root = tmp_path / "split_data"
    start = 0
    for split, count in SPLIT_COUNTS.items():
        for cls in CLASSES:
            _write_images(root / split / cls, count, cls, start=start)
        start += count
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Class-only layout: ``blue|red /`` with 12 images each (tfpipeline splits it)."""
    root = tmp_path / "class_data"
    for cls in CLASSES:
        _write_images(root / cls, CLASS_ONLY_COUNT, cls)
    return root


# --------------------------------------------------------------------------- bad files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def write_bad_file(folder: Path, kind: str, name: str | None = None) -> Path:
    """Write one bad or unusual file of `kind` (see BAD_FILES) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    extension = ".gif" if kind == "animated" else ".png" if kind in ("rgba", "palette", "huge") else ".jpg"
    if kind.startswith("16-bit"):
        extension = ".png"
    path = folder / (name or f"bad_{kind}{extension}")
    rgb = class_image("red", 7, (48, 40))
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file saved with an image extension\n" * 20)
    elif kind == "truncated":
        Image.fromarray(class_image("red", 3, (64, 64))).save(path, format="JPEG", quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "huge":
        # A valid-looking PNG header claiming 100000 x 100000 pixels with almost no data.
        path.write_bytes(_raw_png(100_000, 100_000, 8, 2, b"\0" * 100))
    elif kind == "broken-link":
        path.symlink_to(folder / "does-not-exist.jpg")
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG")
    elif kind == "rgba":
        Image.fromarray(rgb).convert("RGBA").save(path, format="PNG")
    elif kind == "16-bit":
        gray16 = (np.linspace(0, 65535, 48 * 40).reshape(40, 48)).astype(np.uint16)
        Image.fromarray(gray16).save(path, format="PNG")
    elif kind == "16-bit-rgb":  # Pillow opens these as 8-bit "RGB"; only the header says 16
        rows = b"".join(b"\0" + np.full((48, 3), 40000, ">u2").tobytes() for _ in range(40))
        path.write_bytes(_raw_png(48, 40, 16, 2, rows))
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path, format="PNG")
    elif kind == "animated":
        frames = [Image.fromarray(np.full((40, 48, 3), c, np.uint8)) for c in (20, 120, 220)]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        raise ValueError(f"unknown bad-file kind {kind!r}; known: {', '.join(BAD_FILES)}")
    return path


@pytest.fixture
def add_bad_file() -> Callable[..., Path]:
    """Factory ``add_bad_file(folder, kind, name=None) -> Path``; kinds are BAD_FILES' keys."""
    return write_bad_file


# --------------------------------------------------------------------------- isolation


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the data-check cache (and anything else using TFPIPELINE_CACHE_DIR) per test."""
    cache = tmp_path_factory.mktemp("tfpipeline_cache")
    monkeypatch.setenv("TFPIPELINE_CACHE_DIR", str(cache))
    return cache
