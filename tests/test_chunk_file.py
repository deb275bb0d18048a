"""Chunk files of the pixel cache: the streamed writer and the damage checks (chunk_file.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tfpipeline.data import chunk_file


def test_checksums_name_their_algorithm_and_see_a_single_flipped_bit():
    rows = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    flipped = rows.copy()
    flipped[1, 7, 7, 2] ^= 1
    for algorithm in ("xxh3_64", "crc32", "blake2b"):
        assert chunk_file.checksum(rows, algorithm) != chunk_file.checksum(flipped, algorithm)
    with pytest.raises(ValueError, match="unknown checksum algorithm 'md5'"):
        chunk_file.checksum(rows, "md5")


def test_chunk_writer_trims_to_the_rows_added_and_checks_them(tmp_path):
    rows = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    writer = chunk_file.ChunkWriter(tmp_path, capacity=1000, row_shape=(8, 8, 3))  # a 4-digit header
    writer.add(["a", "b"], rows[:2])
    writer.add(["c"], rows[2:])
    with pytest.raises(ValueError, match="do not match"):
        writer.add(["d"], rows[:2])
    index = writer.finish(tmp_path / "chunk.npy")
    loaded = np.load(tmp_path / "chunk.npy")
    np.testing.assert_array_equal(loaded, rows)
    assert index["keys"] == ["a", "b", "c"] and index["shape"] == [3, 8, 8, 3]
    assert index["checksum"] == chunk_file.checksum(rows)  # hashed as streamed = hashed whole
    assert (tmp_path / "chunk.npy").stat().st_size == len(chunk_file.npy_header(rows.shape)) + rows.nbytes
    full = chunk_file.ChunkWriter(tmp_path, capacity=1, row_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="capacity"):
        full.add(["a", "b"], rows[:2])
    full.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk.npy"]
