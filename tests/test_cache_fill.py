"""Filling the pixel cache and cleaning up after it: a first run streamed into the store, disk
failures and full disks, the data check's unordered fill, temporary files of failed or
interrupted passes, and a killed process's leftovers."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from pixel_cache_fakes import PIXEL_SETTINGS, CountingDecoder, fake_files

from tfpipeline.data import cache_fill, chunk_file, pixel_cache, tensor_memory


def test_a_first_run_streams_into_the_store_and_serves_the_chunk_itself(tmp_path):
    paths = fake_files(tmp_path / "img", 5)  # three batches of the stand-in decoder
    decoder = CountingDecoder()
    pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 0, "decoded": 5} and isinstance(pixels, np.memmap)  # no array in memory
    np.testing.assert_array_equal(pixels, decoder.pixels(paths))
    assert pixels.ctypes.data % tensor_memory.TENSOR_ALIGNMENT == 0  # TensorFlow can use it in place
    folder = pixel_cache.PixelStore(PIXEL_SETTINGS).folder
    assert not list(folder.glob("*.tmp"))
    again, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 5, "decoded": 0} and decoder.decoded == 5
    np.testing.assert_array_equal(again, pixels)


def test_a_disk_failing_mid_write_costs_a_second_decode_never_pixels(tmp_path, monkeypatch, caplog):
    paths = fake_files(tmp_path / "img", 5)
    decoder = CountingDecoder()
    real_add = chunk_file.ChunkWriter.add

    def add_then_fail(self, keys, rows):
        if self.keys:  # the second batch
            raise OSError(28, "No space left on device")
        real_add(self, keys, rows)

    monkeypatch.setattr(chunk_file.ChunkWriter, "add", add_then_fail)
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts["decoded"] == 5 and "not writable" in caplog.text and "No space" in caplog.text
    np.testing.assert_array_equal(pixels, decoder.pixels(paths))
    folder = pixel_cache.PixelStore(PIXEL_SETTINGS).folder
    assert not list(folder.glob("*.tmp")) and not list(folder.glob("*.npy"))  # nothing half-written


def test_a_full_disk_is_found_before_decoding(tmp_path, monkeypatch, caplog):
    paths = fake_files(tmp_path / "img", 3)
    decoder = CountingDecoder()

    def full(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunk_file.os, "posix_fallocate", full, raising=False)
    pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts["decoded"] == 3 and decoder.decoded == 3  # decoded once: in memory, not half on disk
    np.testing.assert_array_equal(pixels, decoder.pixels(paths))
    assert not list(pixel_cache.PixelStore(PIXEL_SETTINGS).folder.glob("*.tmp"))


def test_the_check_pass_stores_images_in_any_order_and_only_those_it_decoded(tmp_path):
    paths = fake_files(tmp_path / "img", 6)
    cache_fill.cached_pixels(paths[:2], PIXEL_SETTINGS, CountingDecoder())  # two already stored
    fill = cache_fill.UnorderedFill(paths, PIXEL_SETTINGS)
    for index in (5, 0, 3, 1, 2):  # a parallel pass's order; file 4 failed to decode
        fill.add(index, CountingDecoder.pixels([paths[index]])[0])
    fill.commit()
    store = pixel_cache.PixelStore(PIXEL_SETTINGS)
    assert list(store.known(pixel_cache.file_keys(paths))) == [True] * 4 + [False, True]
    pixels, found = store.lookup(pixel_cache.file_keys(paths))
    assert list(found) == [True] * 4 + [False, True]
    stored = [p for i, p in enumerate(paths) if i != 4]
    np.testing.assert_array_equal(pixels[found], CountingDecoder.pixels(stored))
    assert len(list(store.folder.glob("*.npy"))) == 2  # the new chunk holds only files 2, 3, 5


def test_no_temporary_file_outlives_a_failed_or_interrupted_pass(tmp_path, monkeypatch, caplog):
    paths = fake_files(tmp_path / "img", 5)
    folder = pixel_cache.PixelStore(PIXEL_SETTINGS).folder

    def failing_decoder(batch_paths):
        yield CountingDecoder.pixels(batch_paths[:2])
        raise RuntimeError("corrupt file")

    with pytest.raises(RuntimeError, match="corrupt file"):  # the decoder's own error, unchanged
        cache_fill.cached_pixels(paths, PIXEL_SETTINGS, failing_decoder)
    interrupted = cache_fill.UnorderedFill(paths, PIXEL_SETTINGS)
    interrupted.add(0, CountingDecoder.pixels(paths[:1])[0])
    interrupted.abandon()  # the check pass was interrupted (Ctrl-C)
    unwritable = cache_fill.UnorderedFill(paths, PIXEL_SETTINGS)
    unwritable.add(0, CountingDecoder.pixels(paths[:1])[0])

    def too_large(self, keys, rows):
        raise OSError(27, "File too large")

    monkeypatch.setattr(chunk_file.ChunkWriter, "add", too_large)
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        unwritable.add(1, CountingDecoder.pixels(paths[1:2])[0])  # a warning, not a crash of the check
        unwritable.add(2, CountingDecoder.pixels(paths[2:3])[0])
        unwritable.commit()
    assert "File too large" in caplog.text
    assert not list(folder.glob("*.tmp")) and not list(folder.glob("*.npy"))


def test_an_index_that_cannot_be_written_takes_its_array_along(tmp_path, monkeypatch):
    paths = fake_files(tmp_path / "img", 3)
    store = pixel_cache.PixelStore(PIXEL_SETTINGS)
    writer = store.new_chunk(3)  # settings.json written
    writer.add(pixel_cache.file_keys(paths), CountingDecoder.pixels(paths))

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pixel_cache, "atomic_write", disk_full)
    with pytest.raises(OSError):
        store.commit(writer)
    assert not list(store.folder.glob("*.npy")) and not list(store.folder.glob("*.tmp"))


def test_leftovers_of_a_killed_process_are_deleted_after_a_day(tmp_path):
    paths = fake_files(tmp_path / "img", 3)
    cache_fill.cached_pixels(paths, PIXEL_SETTINGS, CountingDecoder())
    folder = pixel_cache.PixelStore(PIXEL_SETTINGS).folder
    old_tmp, fresh_tmp, orphan = folder / "a.npy.tmp", folder / "b.npy.tmp", folder / "c.npy"
    for leftover in (old_tmp, fresh_tmp, orphan):
        leftover.write_bytes(b"x" * 100)
    day_ago = time.time() - pixel_cache.STALE_SECONDS - 60
    for leftover in (old_tmp, orphan):
        os.utime(leftover, (day_ago, day_ago))
    assert pixel_cache.evict(10**9) == 200
    assert not old_tmp.exists() and not orphan.exists() and fresh_tmp.exists()  # maybe being written
    hits = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, CountingDecoder())[1]["hits"]
    assert hits == 3  # chunks untouched
