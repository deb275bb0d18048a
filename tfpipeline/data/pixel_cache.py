"""A decode cache that outlives a run: decoded, resized uint8 pixels on disk, keyed by file.

Decoding is the whole cost of a first epoch (benchmarks/README.md), and every run, tuner trial,
cross-validation fold and evaluation used to decode the same files again. The store keeps each
file's pixels under a key made of its real path, size and modification time, in a folder per
decode setting (size, channels, resize method, interpolation, decoder version), so:

- a second run, every tuner trial and every fold reads pixels instead of decoding them;
- a file changed after caching has another key and is decoded again;
- a subset of files (a fold, a split) reuses the pixels of any earlier set that held them.

Layout under `$TFPIPELINE_CACHE_DIR/pixels` (default `~/.cache/tfpipeline/pixels`)::

    <settings hash>/settings.json         what the pixels mean
    <settings hash>/<chunk>.npy           uint8 [n, H, W, C]
    <settings hash>/<chunk>.json          the n file keys, array shape, XXH3-64 checksum

A decoding pass streams its images into a new chunk as they come (:mod:`~tfpipeline.data.cache_fill`),
so a first run holds its pixels once, in the page cache, which it then maps.
Writes are atomic and the index is written last, so a reader never sees a half-written chunk;
a chunk whose array does not match its index (truncated, damaged) is deleted and its files
decoded again. Two processes may fill the store at once (each writes its own chunks; duplicates
are harmless). The store is bounded (`TFPIPELINE_PIXEL_CACHE_GB`, default 20): the least
recently used chunks go first. An unwritable cache folder means a warning and no cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from stat import S_ISLNK
from typing import Any

import numpy as np

from tfpipeline.data.chunk_file import ChunkWriter, atomic_write, checksum, map_chunk
from tfpipeline.data.tensor_memory import aligned_empty

log = logging.getLogger(__name__)

DECODER_VERSION = 1  # bump when decode.encoded_to_pixels changes its output
DEFAULT_LIMIT_GB = 20.0
ENABLE_ENV = "TFPIPELINE_PIXEL_CACHE"  # "0" turns the store off
LIMIT_ENV = "TFPIPELINE_PIXEL_CACHE_GB"
STALE_SECONDS = 24 * 3600  # leftovers of a killed process older than this are deleted
_WARNED: set[str] = set()


def cache_root() -> Path:
    """`$TFPIPELINE_CACHE_DIR` (or `~/.cache/tfpipeline`) / pixels."""
    base = os.environ.get("TFPIPELINE_CACHE_DIR") or Path.home() / ".cache" / "tfpipeline"
    return Path(base) / "pixels"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def limit_bytes() -> int:
    try:
        return int(float(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_GB)) * 1e9)
    except ValueError:
        return int(DEFAULT_LIMIT_GB * 1e9)


@dataclass(frozen=True)
class DecodeSettings:
    """Everything that changes the cached pixels of a file."""

    size: tuple[int, int]
    channels: int
    resize: str
    interpolation: str
    decoder: int = DECODER_VERSION

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.size, self.channels)


def file_keys(paths: Sequence[str]) -> list[str]:
    """Each file's identity in the store: real path, size and modification time (ns).

    The real path resolves symbolic links; each folder is resolved once, because resolving
    every file's full path took 0.05 s of a cached run's 0.3 s over 1,831 files.
    """
    real_folders: dict[str, str] = {}
    keys = []
    for path in paths:
        stat = os.lstat(path)
        if S_ISLNK(stat.st_mode):  # the file itself is a link: its target is what gets decoded
            real, stat = os.path.realpath(path), os.stat(path)
        else:
            folder, name = os.path.split(path)
            if folder not in real_folders:
                real_folders[folder] = os.path.realpath(folder)
            real = os.path.join(real_folders[folder], name)
        keys.append(f"{real}|{stat.st_size}|{stat.st_mtime_ns}")
    return keys


def file_key(path: str) -> str:
    """One file's identity in the store (see :func:`file_keys`)."""
    return file_keys([path])[0]


def _run_start(chunk_keys: Sequence[str], keys: Sequence[str]) -> int | None:
    """Where `keys` start as consecutive rows of a chunk listing `chunk_keys`, or None."""
    if not keys or len(keys) > len(chunk_keys):
        return None
    try:
        start = chunk_keys.index(keys[0])
    except ValueError:
        return None
    return start if list(chunk_keys[start : start + len(keys)]) == list(keys) else None


class PixelStore:
    """The chunks of one decode setting (see the module docstring).

    Args:
        settings: the decode settings the pixels were made with.
        root: the cache folder (default :func:`cache_root`).
    """

    def __init__(self, settings: DecodeSettings, root: Path | None = None):
        self.settings = settings
        self.folder = (root or cache_root()) / settings.key

    # -- reading
    def _chunks(self) -> list[tuple[Path, dict[str, Any]]]:
        chunks = []
        for index_file in sorted(self.folder.glob("*.json")):
            if index_file.name == "settings.json":
                continue
            try:
                chunks.append((index_file, json.loads(index_file.read_text())))
            except (OSError, ValueError):
                continue  # being written by another process, or already evicted
        return chunks

    def _load(self, index_file: Path, index: dict[str, Any]) -> np.ndarray | None:
        """The chunk's verified array, or None (damaged chunks are deleted; chunks that cannot be
        mapped now, e.g. evicted meanwhile or out of address space, are left alone)."""
        array_file = index_file.with_suffix(".npy")
        try:
            array = map_chunk(array_file)
        except FileNotFoundError:
            return None  # evicted by another process since the index was read
        except OSError as exc:  # a healthy chunk this process cannot map now: not damage
            warn_once(str(array_file), f"pixel cache: cannot map {array_file} ({exc}); decoding its images")
            return None
        except ValueError:  # truncated or not an array file
            array = None
        try:
            valid = (
                array is not None
                and tuple(array.shape) == (len(index["keys"]), *self.settings.shape)
                and array.dtype == np.uint8
                and checksum(array, index.get("algorithm", "blake2b")) == index["checksum"]
            )
        except (OSError, ValueError, KeyError):
            valid = False
        if not valid:
            log.warning(
                "pixel cache: discarding damaged chunk %s; its images will be decoded again", array_file
            )
            for path in (index_file, array_file):
                path.unlink(missing_ok=True)
            return None
        os.utime(index_file)  # recently used: evicted last
        return array

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [len(keys), H, W, C] with found rows filled, found mask).

        When one chunk holds `keys` as consecutive rows, in order, the pixels are a view of that
        chunk's private memory map: no copy, nor one into TensorFlow. That is a run over the
        same split again, or over any split of a folder whose data check filled the cache (the
        check's pass stores every split's files, split after split). Otherwise a new array
        aligned for TensorFlow (:func:`~tfpipeline.data.tensor_memory.aligned_empty`).
        """
        keys = list(keys)
        chunks = self._chunks()
        for index_file, index in chunks:
            start = _run_start(index.get("keys", ()), keys)
            if start is not None:
                array = self._load(index_file, index)
                if array is not None:
                    return array[start : start + len(keys)], np.ones(len(keys), bool)
        wanted: dict[str, list[int]] = {}  # key -> its rows in `keys` (a file may be listed twice)
        for i, key in enumerate(keys):
            wanted.setdefault(key, []).append(i)
        pixels = aligned_empty((len(keys), *self.settings.shape))  # rows not found: caller fills
        found = np.zeros(len(keys), bool)
        for index_file, index in chunks:
            chunk_keys = index.get("keys", ())
            rows = [(r, k) for r, k in enumerate(chunk_keys) if k in wanted and not found[wanted[k][0]]]
            if not rows:
                continue
            array = self._load(index_file, index)
            if array is None:
                continue
            sources = np.array([r for r, _ in rows])  # increasing: a sequential read of the chunk
            targets = np.array([wanted[k][0] for _, k in rows])
            # One vectorised copy straight from the mapped file (the whole chunk when all of it is
            # wanted, the usual case of a run over the same files again).
            pixels[targets] = array if len(rows) == len(chunk_keys) else array[sources]
            found[targets] = True
            for target, (_, key) in zip(targets, rows, strict=True):
                for repeat in wanted[key][1:]:  # the same file listed twice
                    pixels[repeat] = pixels[target]
                    found[repeat] = True
            if found.all():
                break
        return pixels, found

    def known(self, keys: Sequence[str]) -> np.ndarray:
        """Which `keys` some chunk's index lists (unverified: :meth:`lookup` checks the pixels)."""
        listed = {key for _, index in self._chunks() for key in index.get("keys", ())}
        return np.array([key in listed for key in keys], bool)

    # -- writing
    def new_chunk(self, capacity: int) -> ChunkWriter:
        """A writer for a chunk of at most `capacity` images; OSError when the store is not writable."""
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            atomic_write(settings_file, json.dumps(asdict(self.settings)).encode())
        return ChunkWriter(self.folder, capacity, self.settings.shape)

    def commit(self, writer: ChunkWriter) -> np.ndarray | None:
        """Publish the writer's chunk (the index last: readers never see a half-written one) and
        return it mapped (:func:`~tfpipeline.data.chunk_file.map_chunk`); None when it is empty.
        Then evict down to the size bound. OSError when the chunk cannot be written."""
        if not writer.keys:
            writer.discard()
            return None
        name = hashlib.sha1("\n".join(writer.keys).encode()).hexdigest()[:20]
        array_file = self.folder / f"{name}.npy"
        index = writer.finish(array_file)
        try:
            atomic_write(self.folder / f"{name}.json", json.dumps(index).encode())
        except OSError:
            array_file.unlink(missing_ok=True)  # an array without its index would never be evicted
            raise
        try:
            pixels = map_chunk(array_file)  # before eviction, which may delete this very chunk
        except OSError as exc:  # stored, but not mappable now: read into memory instead
            warn_once(str(array_file), f"pixel cache: cannot map {array_file} ({exc}); reading it")
            pixels = np.load(array_file, allow_pickle=False)
        evict(limit_bytes())
        return pixels

    def store(self, keys: Sequence[str], pixels: np.ndarray) -> bool:
        """Add a chunk atomically; False (with one warning) when the cache cannot be written."""
        if not len(keys):
            return True
        return self.stream(keys, [pixels]) is not None

    def stream(self, keys: Sequence[str], batches: Iterable[np.ndarray]) -> np.ndarray | None:
        """Write `batches` (uint8 images of `keys`, in order) to a new chunk as they come and
        return the chunk mapped; None, with one warning, when the cache cannot be written (the
        batches are then not consumed, or only partly)."""
        try:
            writer = self.new_chunk(len(keys))
        except OSError as exc:
            self.not_writable(exc)
            return None
        try:
            for batch in batches:
                start = len(writer.keys)
                writer.add(keys[start : start + len(batch)], batch)
            if len(writer.keys) != len(keys):
                raise ValueError(f"the decoder returned {len(writer.keys)} images for {len(keys)} files")
            return self.commit(writer)
        except OSError as exc:
            writer.discard()
            self.not_writable(exc)
            return None
        except BaseException:  # a decoder error, Ctrl-C: no temporary file stays behind
            writer.discard()
            raise

    def not_writable(self, exc: OSError) -> None:
        folder = self.folder
        warn_once(str(folder), f"pixel cache at {folder} is not writable ({exc}); decoding without it")


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


# ---------------------------------------------------------------------------------------------
# the size bound (`tfpipeline cache info|clear`: cache_housekeeping)


def evict(limit: int, root: Path | None = None) -> int:
    """Delete least recently used chunks until the store holds at most `limit` bytes, and what a
    killed process left behind more than a day ago (temporary files, an array without index)."""
    root = root or cache_root()
    freed = 0
    for leftover in [*root.glob("*/*.tmp"), *root.glob("*/*.npy")]:
        try:
            stat = leftover.stat()
            if time.time() - stat.st_mtime > STALE_SECONDS and not leftover.with_suffix(".json").exists():
                leftover.unlink()
                freed += stat.st_size
        except OSError:
            continue  # gone meanwhile
    chunks = []
    for index_file in root.glob("*/*.json"):
        if index_file.name == "settings.json":
            continue
        array_file = index_file.with_suffix(".npy")
        try:
            chunks.append((index_file.stat().st_mtime, index_file, array_file, array_file.stat().st_size))
        except OSError:
            continue
    total, evicted = sum(size for *_, size in chunks), 0
    for _, index_file, array_file, size in sorted(chunks):
        if total - evicted <= limit:
            break
        index_file.unlink(missing_ok=True)  # the index first: readers then skip the chunk
        array_file.unlink(missing_ok=True)
        evicted += size
    return freed + evicted
