"""Arrays TensorFlow uses in place: pixels handed to tf.data without a copy.

Copying a dataset's pixels into TensorFlow costs a pass over all of them, plus a page fault per
fresh page in a new process: 0.85 s for 275 MB measured on a 2-core VM, longer than the epoch
that follows (benchmarks/README.md). DLPack hands TensorFlow a numpy array's memory itself, if
the array satisfies what TensorFlow's kernels assume of a tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Bytes. TensorFlow's CPU kernels assume tensors start on this boundary (its allocator's; an
# AVX-512 vector) and abort the process on less, so only arrays aligned to it are shared.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: Sequence[int]) -> np.ndarray:
    """An uninitialised uint8 array whose data starts on a TENSOR_ALIGNMENT boundary.

    TensorFlow can then use the array as a tensor without copying it (:func:`pixels_tensor`);
    numpy itself only aligns to 16 bytes.
    """
    count = int(np.prod(shape))
    buffer = np.empty(count + TENSOR_ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % TENSOR_ALIGNMENT
    return buffer[offset : offset + count].reshape(tuple(shape))


def pixels_tensor(pixels: np.ndarray):
    """The pixels as a tensor that shares their memory where TensorFlow allows it.

    Shared: a pixel-cache chunk's private memory map, or an array from :func:`aligned_empty`.
    TensorFlow's kernels abort the process on memory aligned to less than TENSOR_ALIGNMENT and
    DLPack cannot mark an array read-only, so any other array (unaligned, read-only, strided,
    empty) is copied. Share only arrays nothing else writes to while a dataset built on them is in
    use: the pipeline shares the pixel cache's arrays and copies a caller's.
    """
    import tensorflow as tf  # here: the cache's housekeeping commands import this module too

    shareable = (
        pixels.size
        and pixels.flags.c_contiguous
        and pixels.flags.writeable
        and pixels.ctypes.data % TENSOR_ALIGNMENT == 0
    )
    if shareable:
        return tf.experimental.dlpack.from_dlpack(pixels.__dlpack__())
    return tf.constant(pixels)


def aligned_from_batches(batches: Iterable[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """The rows of `batches` (in order) in one :func:`aligned_empty` array of `shape`, filled
    batch by batch: concatenating them would hold every pixel twice at the end.

    Raises:
        ValueError: the batches hold more or fewer rows than `shape[0]`.
    """
    array = aligned_empty(shape)
    start = 0
    for batch in batches:
        if start + len(batch) > len(array):
            raise ValueError(f"more than the {len(array)} expected rows")
        array[start : start + len(batch)] = batch
        start += len(batch)
    if start != len(array):
        raise ValueError(f"{start} rows where {len(array)} were expected")
    return array
