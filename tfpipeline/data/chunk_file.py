"""The pixel cache's chunk files: uint8 `.npy` arrays written as a stream, checked by XXH3.

A first run decodes its images batch by batch. Writing each batch to the chunk file as it
arrives, instead of filling an array and saving it at the end, holds the pixels once (in the
page cache, then mapped) instead of twice, and spares a pass over them: the checksum is
computed on the way. On a 2-core VM, filling a fresh 275 MB array and then writing it cost
0.7–1.9 s of a 3–4 s first epoch (benchmarks/README.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

_MAGIC = b"\x93NUMPY\x01\x00"
_ALIGN = 64  # numpy's own header alignment; also TensorFlow's (tensor_memory.TENSOR_ALIGNMENT)


CHECKSUM = "xxh3_64"  # what new chunks are checked by; older chunks name theirs in their index


def checksum(array: np.ndarray, algorithm: str = CHECKSUM) -> str:
    """A damage check of a chunk (truncation, flipped bits), verified every time it is read.

    XXH3-64 (`xxhash`) runs at memory speed: 0.010 s for 275 MB on 2 cores, where CRC-32 took
    0.039 s and blake2b ~0.45 s, a share of every cached run's start-up that grows with the data.
    Chunks written before keep verifying by the algorithm their index names (`crc32`, `blake2b`).
    """
    data = np.ascontiguousarray(array).data
    if algorithm == "xxh3_64":
        return xxhash.xxh3_64_hexdigest(data)
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    if algorithm == "blake2b":
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def npy_header(shape: Sequence[int], length: int | None = None) -> bytes:
    """A version 1.0 `.npy` header for C-ordered uint8 `shape`, padded to `length` bytes (default:
    the next multiple of 64), so that a header rewritten with a smaller row count keeps its size."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    unpadded = len(_MAGIC) + 2 + len(text) + 1
    length = length or -(-unpadded // _ALIGN) * _ALIGN
    if length < unpadded:
        raise ValueError(f"a .npy header for shape {tuple(shape)} needs {unpadded} bytes, not {length}")
    return (
        _MAGIC + struct.pack("<H", length - 10) + (text + " " * (length - unpadded) + "\n").encode("latin1")
    )


class ChunkWriter:
    """Rows streamed into a new chunk file of at most `capacity` rows of `row_shape`.

    The file is a temporary in `folder` until :meth:`finish` renames it, so no reader ever
    maps a half-written chunk. Its full size is reserved when it is created, so on filesystems
    that reserve space (ext4, xfs, tmpfs) a full disk fails here, before any decoding; elsewhere
    a write fails in :meth:`add`, and the caller discards the writer.

    Args:
        folder: the decode setting's folder of the store (exists).
        capacity: the most rows the chunk will hold (fewer are fine: :meth:`finish` trims).
        row_shape: (H, W, C) of one image.

    Raises:
        OSError: the file cannot be created or its space reserved.
    """

    def __init__(self, folder: Path, capacity: int, row_shape: Sequence[int]):
        self.row_shape = tuple(row_shape)
        self.capacity = capacity
        self.keys: list[str] = []
        self._row_bytes = int(np.prod(self.row_shape))
        self._header_bytes = len(npy_header((capacity, *self.row_shape)))
        self._hash = xxhash.xxh3_64()
        # Unbuffered, so that a failing write raises in `add` and never later, in `close`.
        self._handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by finish/discard
            dir=folder, suffix=".npy.tmp", delete=False, buffering=0
        )
        try:
            self._handle.write(npy_header((capacity, *self.row_shape)))
            _reserve(self._handle.fileno(), self._header_bytes + capacity * self._row_bytes)
        except OSError:
            self.discard()
            raise

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Append `rows` (uint8 [len(keys), *row_shape]) under their file keys.

        Raises:
            ValueError: rows of another shape or type, or more rows than the capacity.
            OSError: the write failed (the caller discards the writer).
        """
        if rows.dtype != np.uint8 or tuple(rows.shape) != (len(keys), *self.row_shape):
            raise ValueError(
                f"rows {rows.dtype} {rows.shape} do not match {len(keys)} keys of {self.row_shape}"
            )
        if len(self.keys) + len(keys) > self.capacity:
            raise ValueError(f"chunk capacity {self.capacity} exceeded")
        data = np.ascontiguousarray(rows).data
        self._handle.write(data)
        self._hash.update(data)
        self.keys.extend(keys)

    def finish(self, array_file: Path) -> dict:
        """Trim the file to the rows added, rename it to `array_file` and return its index
        (keys, shape, checksum), which the caller writes to commit the chunk."""
        shape = (len(self.keys), *self.row_shape)
        try:
            self._handle.seek(0)
            self._handle.write(npy_header(shape, self._header_bytes))
            self._handle.truncate(self._header_bytes + len(self.keys) * self._row_bytes)
            self._handle.close()
            os.replace(self._handle.name, array_file)
        except OSError:
            self.discard()
            raise
        return {
            "keys": list(self.keys),
            "shape": list(shape),
            "algorithm": CHECKSUM,
            "checksum": self._hash.hexdigest(),
        }

    def discard(self) -> None:
        """Close and delete the temporary file (after a failure, or when nothing was added)."""
        try:
            self._handle.close()
        except OSError:
            pass  # the write that failed already said why; the file goes anyway
        finally:
            Path(self._handle.name).unlink(missing_ok=True)


def _reserve(fd: int, size: int) -> None:
    """Reserve `size` bytes for the file; filesystems that cannot reserve (EOPNOTSUPP, EINVAL)
    simply allocate as the rows are written."""
    if not hasattr(os, "posix_fallocate"):  # not on macOS
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def map_chunk(array_file: Path) -> np.ndarray:
    """The chunk as a private (copy-on-write) memory map, which TensorFlow can use in place (DLPack
    cannot carry a read-only flag) and whose writes never reach the file; read-only where the
    system will not reserve memory for a private map (strict overcommit), then copied by the
    pipeline instead. Keep the cache on a local disk: a chunk deleted on a network filesystem
    while a run maps it can fail that run when it reads the pages again."""
    try:
        return np.load(array_file, mmap_mode="c", allow_pickle=False)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        return np.load(array_file, mmap_mode="r", allow_pickle=False)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file and a rename; the temporary never stays behind."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        try:
            handle.write(data)
            handle.close()
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
