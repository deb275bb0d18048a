"""Find bad image files before training, with the same decoder training uses.

Each file gets a cheap header read with Pillow (format, mode, size, frame count) and a full
decode with :func:`tfpipeline.data.decode.decode_image`, run in parallel through tf.data. Results
are cached per file by size and modification time, so a second run over the same folder only
looks at files that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tfpipeline.data import cache_fill, pixel_cache
from tfpipeline.data.headers import DATA_MAX_PIXELS, DATA_MAX_SIDE

# Bump when the checks change so stale cache entries are not trusted.
_CHECK_VERSION = 4
SUPPORTED_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}
# The limits the training decoder's header guard enforces (Pillow's decompression-bomb threshold,
# ~89.5 megapixels, and a side no photo has), so a file that passes the check always decodes.
MAX_PIXELS = DATA_MAX_PIXELS
MAX_SIDE = DATA_MAX_SIDE

FATAL = {"zero-byte", "unreadable", "not-an-image", "unsupported-format", "corrupt", "too-large"}
DESCRIPTIONS = {
    "zero-byte": "empty file",
    "unreadable": "cannot be read",
    "not-an-image": "not an image",
    "unsupported-format": "unsupported format",
    "corrupt": "truncated or corrupt",
    "too-large": "absurd dimensions",
    "cmyk": "CMYK colour (converted to RGB)",
    "16-bit": "16-bit samples (reduced to 8 bits)",
    "alpha": "has transparency (alpha dropped)",
    "palette": "palette image (converted)",
    "animated": "animated (first frame used)",
}


@dataclass(frozen=True)
class FileProblem:
    """One finding about one file; `fatal` findings stop training unless `--skip-bad`."""

    path: str
    kind: str
    detail: str = ""

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL

    def __str__(self) -> str:
        text = f"{self.path}: {DESCRIPTIONS[self.kind]}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class CheckReport:
    """Outcome of checking a list of files."""

    checked: int
    problems: tuple[FileProblem, ...]
    from_cache: int = 0

    @property
    def bad_paths(self) -> set[str]:
        return {p.path for p in self.problems if p.fatal}

    @property
    def warnings(self) -> tuple[FileProblem, ...]:
        return tuple(p for p in self.problems if not p.fatal)

    def format(self, limit: int | None = None) -> str:
        """Human-readable listing: bad files first, then unusual-but-usable ones."""
        bad = [p for p in self.problems if p.fatal]
        lines = [
            f"checked {self.checked} files ({self.from_cache} unchanged since the last check): "
            f"{len(bad)} bad, {len(self.warnings)} unusual"
        ]
        for title, items in (("bad (cannot be used):", bad), ("unusual (usable):", list(self.warnings))):
            if items:
                lines.append(title)
                shown = items if limit is None else items[:limit]
                lines += [f"  {p}" for p in shown]
                if len(shown) < len(items):
                    lines.append(f"  ... and {len(items) - len(shown)} more")
        return "\n".join(lines)


def inspect_header(path: str) -> tuple[list[FileProblem], bool]:
    """Header-level findings for one file, and whether it is worth a full decode."""
    try:
        if os.path.getsize(path) == 0:
            return [FileProblem(path, "zero-byte")], False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _header_findings(path, image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return [FileProblem(path, "too-large", str(exc).split(" could")[0])], False
    except Image.UnidentifiedImageError:
        return [FileProblem(path, "not-an-image", "no image format recognised")], False
    except OSError as exc:
        if exc.strerror is None:  # Pillow's own errors (a broken header) carry no errno
            return [FileProblem(path, "corrupt", str(exc))], False
        return [FileProblem(path, "unreadable", exc.strerror)], False
    except (SyntaxError, ValueError, EOFError, struct.error, MemoryError) as exc:
        # Pillow reports malformed headers and frame tables in several ways.
        return [FileProblem(path, "corrupt", f"{type(exc).__name__}: {exc}")], False


def _header_findings(path: str, image: Image.Image) -> tuple[list[FileProblem], bool]:
    width, height = image.size
    if image.format not in SUPPORTED_FORMATS:
        supported = ", ".join(sorted(SUPPORTED_FORMATS))
        return [FileProblem(path, "unsupported-format", f"{image.format}; supported: {supported}")], False
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE or min(width, height) < 1:
        return [FileProblem(path, "too-large", f"{width}x{height}")], False
    found = []
    mode = image.mode
    if mode == "CMYK":
        found.append(FileProblem(path, "cmyk"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        found.append(FileProblem(path, "16-bit", f"mode {mode}"))
    elif ";16" in _raw_mode(image):  # Pillow opens 16-bit RGB(A) PNGs as 8-bit "RGB(A)"
        found.append(FileProblem(path, "16-bit", f"{_raw_mode(image)} samples"))
    if mode in ("RGBA", "LA", "PA") or (
        mode == "P" and "transparency" in image.info and image.format != "GIF"
    ):
        found.append(FileProblem(path, "alpha", f"mode {mode}"))
    if mode == "P" and image.format != "GIF":
        found.append(FileProblem(path, "palette"))
    if getattr(image, "is_animated", False):
        found.append(FileProblem(path, "animated", f"{image.n_frames} frames"))
    return found, True


def _raw_mode(image: Image.Image) -> str:
    """The file's own sample layout (e.g. `RGB;16B`) as Pillow's first decoder tile names it."""
    for tile in image.tile[:1]:
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, tuple) and args:
            args = args[0]
        if isinstance(args, str):
            return args
    return ""


def decode_failures(
    paths: list[str], channels: int, target_hw: tuple[int, int], settings=None
) -> dict[str, str]:
    """Files the training decoder rejects, mapped to the decoder's error message.

    Args:
        settings: the run's full decode settings (:class:`~tfpipeline.data.pixel_cache.DecodeSettings`);
            when given, the files that decode are also resized and their pixels stored in the
            persistent pixel cache, so this one decoding pass is also the first run's only one.
    """
    if not paths:
        return {}
    import tensorflow as tf

    from tfpipeline.data.decode import decode_image, file_decoder, one_pass_options

    decode_file = None  # the training decoder, traced once per process (decode.file_decoder)
    if settings is not None:
        decode_file = file_decoder(settings.channels, settings.size, settings.resize, settings.interpolation)

    # Traced as written (branches test Python values): autograph's rewrite of the decoder took
    # ~2 s of every first run's check on 2 cores, the pass itself ~3 s.
    @tf.autograph.experimental.do_not_convert
    def decode_one(index, path):
        if decode_file is not None:
            return index, decode_file(path)
        return index, tf.shape(decode_image(tf.io.read_file(path), channels, target_hw))

    decoded = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        # In path order (measured as fast as unordered here): the chunk the pass fills then
        # lists each split's files as consecutive rows, which the split's pipeline maps as they
        # are, without gathering them into a copy (PixelStore.lookup).
        .map(decode_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .with_options(one_pass_options())
    )
    # Streamed into the pixel cache as they come: held once, on disk.
    fill = (
        cache_fill.UnorderedFill(paths, settings) if settings is not None and pixel_cache.enabled() else None
    )
    ok = set()
    try:
        for index, image in decoded.as_numpy_iterator():
            ok.add(int(index))
            if fill is not None:
                fill.add(int(index), image)
    except BaseException:
        if fill is not None:
            fill.abandon()
        raise
    if fill is not None:
        fill.commit()
    failures = {}
    for index in sorted(set(range(len(paths))) - ok):
        try:  # decode the failed file once more, eagerly, only to capture the reason
            decode_image(tf.io.read_file(paths[index]), channels, target_hw)
            failures[paths[index]] = "decoder failed intermittently"
        except tf.errors.OpError as exc:
            failures[paths[index]] = _op_error_text(exc.message)
    return failures


def _decode_problem(path: str, message: str) -> FileProblem:
    """`corrupt`, or `unsupported-format` when Pillow reads the whole file but TensorFlow cannot
    (a valid variant TensorFlow's decoders lack, such as 1-bit BMP)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
                variant = f"{image.format} {image.mode}"
    except Exception:  # noqa: BLE001 - any failure here means the file itself is damaged
        return FileProblem(path, "corrupt", message)
    return FileProblem(path, "unsupported-format", f"{variant} that TensorFlow cannot decode: {message}")


def _op_error_text(message: str) -> str:
    """The decoder's own words from a TensorFlow op error, without node names and op tags."""
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", message.splitlines()[0] if message else "")
    text = re.sub(r"\[Op:\w+\].*$", "", text).strip().rstrip(".")
    return text or "the decoder rejected the file"


def check_files(
    paths: list[str] | tuple[str, ...],
    channels: int = 3,
    target_hw: tuple[int, int] = (224, 224),
    cache_dir: str | Path | None = None,
    fill=None,
) -> CheckReport:
    """Check every file; results for unchanged files come from the cache.

    Args:
        paths: image files.
        channels, target_hw: the decode settings training will use (reduced-scale JPEG decode
            depends on the target size, so it is part of what is checked).
        cache_dir: where results are remembered; default `$TFPIPELINE_CACHE_DIR` or
            `~/.cache/tfpipeline`. Pass a folder that does not exist to disable reuse.
        fill: the run's decode settings (:class:`~tfpipeline.data.pixel_cache.DecodeSettings`):
            the decoding pass then also fills the pixel cache the pipeline reads.

    Returns:
        A CheckReport listing every finding, bad files first in path order.
    """
    settings = f"v{_CHECK_VERSION}-c{channels}-{target_hw[0]}x{target_hw[1]}"
    cache_file = _cache_file(cache_dir, settings)
    cache = _read_cache(cache_file)
    results: dict[str, list[FileProblem]] = {}
    to_decode, stats = [], {}
    from_cache = 0
    for path in paths:
        try:
            stat = os.stat(path)
            stats[path] = [stat.st_size, stat.st_mtime_ns]
        except OSError as exc:
            results[path] = [FileProblem(path, "unreadable", exc.strerror or str(exc))]
            continue
        entry = cache.get(os.path.abspath(path))
        if entry and entry["stat"] == stats[path]:
            results[path] = [FileProblem(**p) for p in entry["problems"]]
            from_cache += 1
            continue
        results[path], decodable = inspect_header(path)
        if decodable:
            to_decode.append(path)
    for path, message in decode_failures(to_decode, channels, target_hw, fill).items():
        results[path].insert(0, _decode_problem(path, message))
    for path, found in results.items():
        if path in stats:
            cache[os.path.abspath(path)] = {"stat": stats[path], "problems": [asdict(p) for p in found]}
    _write_cache(cache_file, cache)
    problems = [p for path in paths for p in results[path]]
    problems.sort(key=lambda p: not p.fatal)  # stable: keeps path order within each group
    return CheckReport(checked=len(paths), problems=tuple(problems), from_cache=from_cache)


def _cache_file(cache_dir: str | Path | None, settings: str) -> Path:
    root = Path(cache_dir or os.environ.get("TFPIPELINE_CACHE_DIR") or Path.home() / ".cache" / "tfpipeline")
    return root / "checks" / f"{hashlib.sha1(settings.encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: check everything again


def _write_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs speed on the next run
