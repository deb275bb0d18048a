"""Shared test fixtures: tiny generated image folders, bad files, tiny trained runs, and an
isolated cache.

Fixtures for any test that needs images on disk (data, training, export tests):

- ``image_folder`` -> Path of a fresh split layout ``train/ val/ test/``, each with class
  subfolders ``blue/`` and ``red/`` (8 / 2 / 2 images per class). Images are 32-64 px, some
  non-square, JPEG and PNG mixed; ``blue`` images are bluish with horizontal stripes, ``red``
  images reddish with vertical stripes (``green`` ones, when asked for, greenish with vertical
  stripes), so a model can tell them apart in a few steps.
- ``class_folder`` -> Path of a fresh class-only layout ``blue/ red/`` (12 images each), which
  tfpipeline splits 0.75/0.125/0.125 itself.
- ``make_images`` -> ``make_images(folder, n, cls="red", start=0, formats=("jpg", "png"))``
  writes `n` more images of a class into `folder` (created if needed); returns their paths.
- ``add_bad_file`` -> ``add_bad_file(folder, kind, name=None)`` writes one bad or unusual file
  of `kind` (a key of ``BAD_FILES``) into `folder` and returns its path.
- ``variables_created_in_functions()`` (a plain context manager: ``from conftest import ...``)
  yields a list that collects the name of every TensorFlow variable created inside a
  tf.function while the block runs (a function whose first trace creates variables is traced
  twice).
- ``write_split_folder(root, counts=(("train", 8), ("val", 2), ("test", 2)), classes=CLASSES,
  formats=("jpg", "png"), sizes=SIZES)`` (a plain function: ``from conftest import ...``)
  writes such a split layout anywhere; image indices run on across splits, so no image is
  repeated between splits. ``image_folder`` is ``write_split_folder(tmp_path / "split_data")``.

Both folders are function-scoped (generated per test in well under 0.1 s), so a test may add,
delete or modify files freely. ``_isolated_cache`` (autouse) points ``TFPIPELINE_CACHE_DIR`` at
a per-test temporary folder so tests never read or write ``~/.cache/tfpipeline``.

Trained runs (session-scoped, each trained once per session and shared by every test asking
for the same arguments -- treat them as read-only and write outputs elsewhere):

- ``tiny_run`` -> ``tiny_run(*flags, counts=..., classes=CLASSES, formats=("jpg", "png"),
  data=None) -> Path`` of a run folder: ``write_split_folder`` data (unless `data` is given),
  then ``tfpipeline train`` for 1 epoch of small_cnn at 32x32 (``TINY_TRAIN``; `flags` come
  after it, so they win). ``tiny_run.data(run)`` is the data folder `run` was trained on.
- ``export_case`` -> ``export_case("binary" | "multi") -> ExportCase`` for the export tests:
  ``.run`` (a ``tiny_run`` run, see ``EXPORT_CASES``) and ``.saved_model`` (its SavedModel
  ``ExportResult``, exported on first use). ``keras_reference(run, split)`` gives a split's
  files, pixels and probabilities through tfpipeline's own pipeline.

Session runs train inside ``pytest.MonkeyPatch.context()`` with ``TFPIPELINE_CACHE_DIR`` at a
folder of their own (the autouse per-test cache cannot serve session fixtures) and with the
CLI's stdout captured (shown if training fails), so a test's ``capsys`` never sees it.

The evaluation tests' deterministic labels and class probabilities live in
``evaluation_scores.py`` (``binary_scores``, ``multiclass_scores``, ``BINARY_NAMES``, ``MULTI_NAMES``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("blue", "red")
SPLIT_COUNTS = (("train", 8), ("val", 2), ("test", 2))  # (split, images per class)
CLASS_ONLY_COUNT = 12
SIZES = ((32, 32), (48, 40), (64, 48), (40, 64))  # (width, height)
CLASS_SEEDS = {"blue": 0, "red": 1000, "green": 2000}  # any other class name seeds like blue

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
    """A deterministic, unique uint8 RGB image of class `cls` (size (width, height)).

    `red` is reddish, `green` greenish (both vertical stripes); `blue` and any other class
    bluish with horizontal stripes.
    """
    width, height = size or SIZES[index % len(SIZES)]
    rng = np.random.default_rng(CLASS_SEEDS.get(cls, 0) + index)
    period = 4 + index % 5
    if cls in ("red", "green"):
        stripes = (np.arange(width) // period % 2)[None, :].repeat(height, 0)
        base = np.array([200, 40 + 3 * index, 30] if cls == "red" else [40, 190, 60], np.float32)
    else:
        stripes = (np.arange(height) // period % 2)[:, None].repeat(width, 1)
        base = np.array([30, 60 + 3 * index, 200], np.float32)
    image = base + 40.0 * stripes[..., None] + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_images(
    folder: Path, n: int, cls: str, start: int = 0, formats=("jpg", "png"), sizes=SIZES
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"{cls}_{i:03d}.{formats[i % len(formats)]}"
        options = {"quality": 95} if path.suffix == ".jpg" else {}
        Image.fromarray(class_image(cls, i, sizes[i % len(sizes)])).save(path, **options)
        paths.append(path)
    return paths


def write_split_folder(
    root: Path,
    counts=SPLIT_COUNTS,
    classes=CLASSES,
    formats=("jpg", "png"),
    sizes=SIZES,
) -> Path:
    """Split layout ``root / split / class /`` with `count` images per class for each (split, count)."""
    start = 0
    for split, count in counts:
        for cls in classes:
            _write_images(root / split / cls, count, cls, start=start, formats=formats, sizes=sizes)
        start += count
    return root


@pytest.fixture
def make_images() -> Callable[..., list[Path]]:
    """Factory writing `n` more class images into a folder; see the module docstring."""
    return _write_images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Split layout: ``train|val|test / blue|red /`` with 8/2/2 images per class."""
    return write_split_folder(tmp_path / "split_data")


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


# --------------------------------------------------------------------------- trained runs

# Every tiny_run trains with these; its own flags come after, and argparse lets the last win.
TINY_TRAIN = ("--epochs", "1", "--image-size", "32", "--padding", "same", "--batch-size", "8")
TINY_TRAIN += ("--optimizer", "adam", "--lr", "0.01", "--cache", "none")


@contextlib.contextmanager
def _cache_dir(folder: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFPIPELINE_CACHE_DIR", str(folder))
        yield


class TinyRuns:
    """``tiny_run(*flags, counts=..., classes=..., formats=..., data=None) -> run folder``.

    One run per distinct set of arguments, trained on first request; ``data(run)`` is the
    folder the run was trained on (``run.parent.parent / "data"`` unless `data` was given).
    """

    def __init__(self, factory: pytest.TempPathFactory):
        self._factory = factory
        self._cache = factory.mktemp("tiny_run_cache")
        self._runs: dict[tuple, Path] = {}
        self._data: dict[Path, Path] = {}

    def __call__(
        self,
        *flags: str,
        counts=SPLIT_COUNTS,
        classes=CLASSES,
        formats=("jpg", "png"),
        data: Path | None = None,
    ) -> Path:
        counts = tuple((split, int(n)) for split, n in counts)
        key = (flags, counts, tuple(classes), tuple(formats), None if data is None else str(data))
        if key not in self._runs:
            from tfpipeline.cli import main

            folder = self._factory.mktemp("tiny_run")
            if data is None:
                data = write_split_folder(folder / "data", counts, classes, formats)
            argv = ["train", "--data", str(data), "--run-dir", str(folder / "runs"), *TINY_TRAIN, *flags]
            with _cache_dir(self._cache), contextlib.redirect_stdout(io.StringIO()) as out:
                code = main(argv)
            assert code == 0, f"tiny_run {argv} exited {code}:\n{out.getvalue()[-3000:]}"
            (run,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
            self._runs[key], self._data[run] = run, Path(data)
        return self._runs[key]

    def data(self, run: Path) -> Path:
        """The data folder `run` (a run this factory trained) was trained on."""
        return self._data[run]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    """Session-cached factory of 1-epoch small_cnn run folders; see the module docstring."""
    return TinyRuns(tmp_path_factory)


# --------------------------------------------------------------------------- export runs

# The export tests' runs (tiny_run arguments; lr and cache as those tests always trained) and
# the name of their SavedModel export (None: the model's name).
_EXPORT_TRAIN = ("--lr", "0.003", "--cache", "memory")
EXPORT_CASES: dict[str, dict[str, Any]] = {
    # "blue" sorts first: a positive class at index 0, scored by the sigmoid unit.
    "binary": {
        "flags": (*_EXPORT_TRAIN, "--positive-class", "blue", "--threshold", "tuned", "--resize", "crop"),
        "classes": ("blue", "red"),
        "counts": (("train", 8), ("val", 3), ("test", 3)),
        "name": None,
    },
    # 3 classes, grayscale, `pad` resizing, `symmetric` scaling: preprocessing off the defaults.
    "multi": {
        "flags": (*_EXPORT_TRAIN, "--grayscale", "--resize", "pad", "--scaling", "symmetric")
        + ("--interpolation", "bicubic"),
        "classes": ("green", "blue", "red"),
        "counts": (("train", 6), ("val", 2), ("test", 2)),
        "name": "colours",
    },
}
EXPORT_FORMATS = ("jpg", "png", "bmp")
EXPORT_TOLERANCE = 1e-5  # max |probability difference| between an export and the Keras model


@dataclass
class ExportCase:
    """A trained export-test run and its SavedModel export (made on first use)."""

    run: Path
    out: Path
    name: str | None
    cache: Path

    @functools.cached_property
    def saved_model(self) -> Any:
        from tfpipeline.export import export_run

        with _cache_dir(self.cache):
            return export_run(self.run, out=self.out, name=self.name)


@pytest.fixture(scope="session")
def export_case(tiny_run: TinyRuns, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ExportCase]:
    """Factory ``export_case("binary" | "multi") -> ExportCase``; see ``EXPORT_CASES``."""
    cases: dict[str, ExportCase] = {}

    def make(kind: str) -> ExportCase:
        if kind not in cases:
            spec = EXPORT_CASES[kind]
            run = tiny_run(
                *spec["flags"], counts=spec["counts"], classes=spec["classes"], formats=EXPORT_FORMATS
            )
            out = tmp_path_factory.mktemp(f"exports_{kind}")
            cases[kind] = ExportCase(run, out, spec["name"], tmp_path_factory.mktemp("export_cache"))
        return cases[kind]

    return make


def keras_reference(run: Path, split: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file paths, uint8 pixels, probabilities) of one split through tfpipeline's own pipeline."""
    from tfpipeline.data.pipeline import build_dataset, decoded_images
    from tfpipeline.data.sources import resolve_source
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.evaluation.run_report import class_probabilities

    context = open_run(run)
    data = replace(context.config.data, cache="none")
    chosen = resolve_source(data).splits[split]
    dataset = build_dataset(
        chosen, data, scaling=context.scaling, training=False, num_classes=context.num_classes
    )
    raw = load_run_model(context).predict(dataset, verbose=0)
    probs = class_probabilities(raw, context.num_classes, context.positive_index)
    pixels = np.concatenate([images.numpy() for images, _ in decoded_images(chosen, data).batch(64)])
    return list(chosen.paths), pixels, probs


# --------------------------------------------------------------------------- tracing


@contextlib.contextmanager
def variables_created_in_functions() -> Iterator[list[str]]:
    """Names of the TensorFlow variables created inside a tf.function during the block."""
    import tensorflow as tf

    created: list[str] = []

    def record(next_creator, **kwargs):
        if tf.inside_function():
            created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(record):
        yield created
