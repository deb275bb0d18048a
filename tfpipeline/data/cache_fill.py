"""Filling the pixel cache from a decoding pass: a run's split in path order
(:func:`cached_pixels`), or the data check's parallel pass in the order it yields its files
(:class:`UnorderedFill`). Both stream images into a new chunk as they come, so a first run holds
its pixels once, in the page cache, which it then maps (:mod:`~tfpipeline.data.chunk_file`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tfpipeline.data.chunk_file import ChunkWriter
from tfpipeline.data.pixel_cache import DecodeSettings, PixelStore, enabled, file_keys, warn_once
from tfpipeline.data.tensor_memory import aligned_empty, aligned_from_batches


def cached_pixels(
    paths: Sequence[str], settings: DecodeSettings, decode: Callable[[list[str]], Iterable[np.ndarray]]
) -> tuple[np.ndarray, dict[str, int]]:
    """The pixels of `paths`, from the store where present, decoded (and stored) otherwise.

    A first run over the files (none cached) streams the decoded batches into a new chunk and
    returns the chunk mapped: its pixels are held once, in the page cache, not in an array plus
    the copy written out.

    Args:
        paths: image files.
        settings: the decode settings.
        decode: decodes a list of paths to uint8 [n, H, W, C] batches, in order (the training
            decoder, :func:`~tfpipeline.data.pipeline.decoded_file_batches`).

    Returns:
        (pixels in `paths` order, counts {"hits", "decoded"}).
    """
    shape = (len(paths), *settings.shape)
    if not paths:
        return aligned_empty(shape), {"hits": 0, "decoded": 0}
    if not enabled():
        return aligned_from_batches(decode(list(paths)), shape), {"hits": 0, "decoded": len(paths)}
    store = PixelStore(settings)
    keys = file_keys(paths)
    try:
        pixels, found = store.lookup(keys)
    except OSError as exc:
        warn_once(
            str(store.folder), f"pixel cache at {store.folder} is not readable ({exc}); decoding without it"
        )
        return aligned_from_batches(decode(list(paths)), shape), {"hits": 0, "decoded": len(paths)}
    missing = np.flatnonzero(~found)
    if len(missing) == len(paths):  # a first run: decoded straight into the store
        streamed = store.stream(keys, decode(list(paths)))
        # An unwritable store, or a disk failing mid-write: decoded in memory, from the start.
        pixels = streamed if streamed is not None else aligned_from_batches(decode(list(paths)), shape)
    elif len(missing):
        fresh = aligned_from_batches(decode([paths[i] for i in missing]), (len(missing), *settings.shape))
        pixels[missing] = fresh
        store.store([keys[i] for i in missing], fresh)
    return pixels, {"hits": int(found.sum()), "decoded": int(len(missing))}


class UnorderedFill:
    """Stores images one by one, in the order a decoding pass yields them (the data check's
    parallel pass, which also drops undecodable files), into one new chunk of the files the store
    lacks. A store that cannot be written means one warning and no chunk. The check's pass yields
    its files in path order, split after split, so each split is a run of the chunk's rows.

    Args:
        paths: the files the pass decodes (indices in :meth:`add` refer to this list).
        settings: the decode settings of the images.
    """

    def __init__(self, paths: Sequence[str], settings: DecodeSettings):
        self.store = PixelStore(settings)
        self.keys = file_keys(paths)
        self.wanted = ~self.store.known(self.keys)
        self.writer: ChunkWriter | None = None
        self.failed = False

    def add(self, index: int, image: np.ndarray) -> None:
        if self.failed or not self.wanted[index]:
            return
        try:
            if self.writer is None:
                self.writer = self.store.new_chunk(int(self.wanted.sum()))
            self.writer.add([self.keys[index]], image[np.newaxis])
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        if self.writer is not None and not self.failed:
            try:
                self.store.commit(self.writer)
            except OSError as exc:
                self._fail(exc)

    def abandon(self) -> None:
        """Delete the unfinished chunk (the pass was interrupted)."""
        if self.writer is not None and not self.failed:
            self.failed = True
            self.writer.discard()

    def _fail(self, exc: OSError) -> None:
        self.abandon()
        self.failed = True
        self.store.not_writable(exc)
