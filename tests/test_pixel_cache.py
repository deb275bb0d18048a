"""The persistent pixel cache: reuse across runs, invalidation, damage, concurrency, bounds, CLI."""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
from pixel_cache_fakes import PIXEL_SETTINGS, CountingDecoder, fake_files

from tfpipeline.cli import main
from tfpipeline.config import DataConfig
from tfpipeline.data import cache_fill, cache_housekeeping, chunk_file, pixel_cache, tensor_memory
from tfpipeline.data.pipeline import build_dataset, decoded_images
from tfpipeline.data.split import Split


def test_second_use_reads_instead_of_decoding(tmp_path):
    paths = fake_files(tmp_path / "img", 6)
    decoder = CountingDecoder()
    first, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 0, "decoded": 6}
    subset = paths[1:4][::-1]  # a fold or a split of the same files: any order, any subset
    again, counts = cache_fill.cached_pixels(subset, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 3, "decoded": 0} and decoder.decoded == 6
    np.testing.assert_array_equal(again, first[[3, 2, 1]])
    other = pixel_cache.DecodeSettings((8, 8), 3, "crop", "bilinear")  # other settings: other pixels
    assert cache_fill.cached_pixels(paths[:2], other, decoder)[1]["decoded"] == 2


def test_a_changed_file_is_decoded_again(tmp_path):
    paths = fake_files(tmp_path / "img", 3)
    decoder = CountingDecoder()
    cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    with open(paths[1], "wb") as handle:
        handle.write(bytes([200]) * 10)
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 2, "decoded": 1} and pixels[1].max() == 200


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_chunk_is_discarded_and_rebuilt(tmp_path, caplog, damage):
    paths = fake_files(tmp_path / "img", 4)
    decoder = CountingDecoder()
    expected = np.array(cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)[0])  # a copy: the
    # first run's pixels are the chunk file mapped, which this test damages in place
    (array_file,) = pixel_cache.PixelStore(PIXEL_SETTINGS).folder.glob("*.npy")
    data = bytearray(array_file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # one flipped byte in the pixels: only the checksum can tell
    array_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 0, "decoded": 4} and "damaged chunk" in caplog.text
    np.testing.assert_array_equal(pixels, expected)  # never the damaged pixels
    assert cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)[1] == {"hits": 4, "decoded": 0}


@pytest.mark.parametrize("older", ["crc32", "blake2b"])
def test_chunks_of_an_older_checksum_still_verify_and_repeated_files_are_served(tmp_path, caplog, older):
    import json

    paths = fake_files(tmp_path / "img", 4)
    decoder = CountingDecoder()
    expected, _ = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    (index_file,) = [
        f for f in pixel_cache.PixelStore(PIXEL_SETTINGS).folder.glob("*.json") if f.stem != "settings"
    ]
    index = json.loads(index_file.read_text())
    assert index["algorithm"] == "xxh3_64" and index["checksum"] == chunk_file.checksum(expected)
    # Chunks written by earlier versions (CRC-32; blake2b, with no "algorithm" key) are still
    # read, and still checked by their own algorithm.
    index["checksum"] = chunk_file.checksum(expected, older)
    if older == "blake2b":
        del index["algorithm"]
    else:
        index["algorithm"] = older
    index_file.write_text(json.dumps(index))
    twice = [paths[2], paths[0], paths[2]]
    pixels, counts = cache_fill.cached_pixels(twice, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 3, "decoded": 0} and decoder.decoded == 4
    np.testing.assert_array_equal(pixels, expected[[2, 0, 2]])
    index["checksum"] = "0" * len(index["checksum"])  # a wrong older checksum is damage like any other
    index_file.write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        assert cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)[1] == {"hits": 0, "decoded": 4}
    assert "damaged chunk" in caplog.text


def test_an_unwritable_cache_warns_once_and_still_works(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TFPIPELINE_CACHE_DIR", str(blocker))
    paths = fake_files(tmp_path / "img", 2)
    decoder = CountingDecoder()
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        for _ in range(3):
            pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
            assert counts["decoded"] == 2 and pixels[1].max() == 1
    assert caplog.text.count("not writable") == 1


def test_two_writers_at_once_never_expose_half_written_chunks(tmp_path):
    paths = fake_files(tmp_path / "img", 40)
    decoder = CountingDecoder()
    results, errors = [], []

    def work(part):
        try:
            for _ in range(5):
                results.append((part, cache_fill.cached_pixels(part, PIXEL_SETTINGS, decoder)[0]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(paths[i::2] + paths[:10],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for part, pixels in results:
        np.testing.assert_array_equal(pixels, decoder.pixels(part))
    assert not list(pixel_cache.PixelStore(PIXEL_SETTINGS).folder.glob("*.tmp"))


def test_the_store_is_bounded_least_recently_used_first(tmp_path):
    decoder = CountingDecoder()
    folder = pixel_cache.PixelStore(PIXEL_SETTINGS).folder
    groups = [fake_files(tmp_path / f"g{i}", 5) for i in range(3)]
    now = time.time()
    for age, group in zip((300, 200, 100), groups, strict=True):  # the first group is the oldest
        before = set(folder.glob("*.json"))
        cache_fill.cached_pixels(group, PIXEL_SETTINGS, decoder)
        (index,) = set(folder.glob("*.json")) - before - {folder / "settings.json"}
        os.utime(index, (now - age, now - age))
    chunk = next(folder.glob("*.npy")).stat().st_size
    assert pixel_cache.evict(chunk + 10) == 2 * chunk
    assert cache_fill.cached_pixels(groups[2], PIXEL_SETTINGS, decoder)[1]["hits"] == 5  # the newest stays
    assert cache_fill.cached_pixels(groups[0], PIXEL_SETTINGS, decoder)[1]["hits"] == 0


def test_pipeline_reads_the_cache_and_matches_a_fresh_decode(image_folder, caplog):
    paths = sorted(str(p) for p in (image_folder / "train" / "red").iterdir())
    split = Split(labels=np.ones(len(paths), np.int32), paths=tuple(paths))
    config = DataConfig(data=str(image_folder), image_size=(24, 24), batch_size=4)
    fresh = np.concatenate([x for x, _ in decoded_images(split, config).batch(8).as_numpy_iterator()])

    def pixels():
        dataset = build_dataset(split, config, scaling="raw", training=False, num_classes=2)
        return np.concatenate([x for x, _ in dataset.as_numpy_iterator()])

    with caplog.at_level(logging.INFO, logger="tfpipeline.data.pipeline"):
        first = pixels()
    assert "decoded 8 image(s), read 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfpipeline.data.pipeline"):
        second = pixels()
    assert "decoded" not in caplog.text  # everything came from the cache
    np.testing.assert_array_equal(first, fresh.astype(np.float32))
    np.testing.assert_array_equal(second, first)


def test_cache_info_and_clear_commands(tmp_path, capsys):
    cache_fill.cached_pixels(fake_files(tmp_path / "img", 3), PIXEL_SETTINGS, CountingDecoder())
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(pixel_cache.cache_root()) in out and "3 images" in out and "8x8" in out
    assert main(["cache", "clear"]) == 0
    assert "freed" in capsys.readouterr().out and not pixel_cache.cache_root().exists()


def test_the_data_check_fills_the_cache_so_a_first_run_decodes_once(image_folder, caplog):
    from tfpipeline.data import load_data

    config = DataConfig(data=str(image_folder), image_size=(24, 24), batch_size=4)
    with caplog.at_level(logging.INFO, logger="tfpipeline.data.pipeline"):
        bundle = load_data(config, scaling="unit")
    assert "pixel cache: decoded" not in caplog.text  # the check's pass already stored the pixels
    stored = cache_housekeeping.info().settings
    assert len(stored) == 1 and stored[0]["images"] == sum(len(s) for s in bundle.splits.values())
    pixels = np.concatenate([x for x, _ in bundle.val.as_numpy_iterator()])
    fresh = np.concatenate([x for x, _ in decoded_images(bundle.splits["val"], config).batch(8)])
    np.testing.assert_allclose(pixels, fresh / 255.0, atol=1e-6)


def test_each_split_the_check_stored_is_served_as_a_view_of_its_chunk(image_folder):
    from tfpipeline.data import load_data
    from tfpipeline.data.pipeline import decode_settings

    config = DataConfig(data=str(image_folder), image_size=(24, 24), batch_size=4)
    bundle = load_data(config, scaling="unit")
    store = pixel_cache.PixelStore(decode_settings(config))
    assert len(list(store.folder.glob("*.npy"))) == 1  # one chunk, filled by the check's pass
    for split in bundle.splits.values():
        pixels, found = store.lookup(pixel_cache.file_keys(split.paths))
        # The check's pass keeps path order, so every split is a run of the chunk's rows: mapped
        # as it is, not gathered into a copy.
        assert found.all() and isinstance(pixels, np.memmap)
        fresh = np.concatenate([x for x, _ in decoded_images(split, config).batch(64).as_numpy_iterator()])
        np.testing.assert_array_equal(pixels, fresh)


def test_consecutive_rows_of_a_chunk_are_a_view_and_any_other_subset_a_copy(tmp_path):
    paths = fake_files(tmp_path / "img", 6)
    cache_fill.cached_pixels(paths, PIXEL_SETTINGS, CountingDecoder())
    store = pixel_cache.PixelStore(PIXEL_SETTINGS)
    for subset in (paths[2:5], paths[5:], paths[:1], paths):
        pixels, found = store.lookup(pixel_cache.file_keys(subset))
        assert found.all() and isinstance(pixels, np.memmap)
        np.testing.assert_array_equal(pixels, CountingDecoder.pixels(subset))
    for subset in (paths[4:1:-1], [paths[1], paths[3]], [paths[5], paths[5]]):
        pixels, found = store.lookup(pixel_cache.file_keys(subset))
        assert found.all() and not isinstance(pixels, np.memmap)
        np.testing.assert_array_equal(pixels, CountingDecoder.pixels(subset))
    outside = fake_files(tmp_path / "other", 1)  # a run that ends past the chunk's last row
    pixels, found = store.lookup(pixel_cache.file_keys([paths[5], *outside]))
    assert list(found) == [True, False]
    np.testing.assert_array_equal(pixels[:1], CountingDecoder.pixels(paths[5:]))


def test_keys_name_the_real_file_behind_links(tmp_path):
    paths = fake_files(tmp_path / "real", 2)
    (tmp_path / "linked_folder").symlink_to(tmp_path / "real")
    (tmp_path / "linked_file.bin").symlink_to(paths[1])
    stat = os.stat(paths[1])
    expected = f"{os.path.realpath(paths[1])}|{stat.st_size}|{stat.st_mtime_ns}"
    via_folder = str(tmp_path / "linked_folder" / "1.bin")
    via_file = str(tmp_path / "linked_file.bin")
    assert pixel_cache.file_keys([paths[1], via_folder, via_file]) == [expected] * 3
    assert pixel_cache.file_key(via_file) == expected


def test_a_write_to_served_pixels_never_reaches_the_cache(tmp_path):
    paths = fake_files(tmp_path / "img", 3)
    decoder = CountingDecoder()
    cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    served, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts["hits"] == 3 and isinstance(served, np.memmap)  # the chunk itself, mapped
    served[:] = 99  # a private (copy-on-write) map: the file keeps its pixels
    again, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 3, "decoded": 0}
    np.testing.assert_array_equal(again, decoder.pixels(paths))


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (5, 7, 3, 1), (3, 224, 224, 3)])
def test_aligned_arrays_start_on_tensorflows_boundary(shape):
    array = tensor_memory.aligned_empty(shape)
    assert array.shape == shape and array.dtype == np.uint8 and array.flags.c_contiguous
    assert array.ctypes.data % tensor_memory.TENSOR_ALIGNMENT == 0


def test_a_chunk_that_cannot_be_mapped_now_is_kept_not_discarded(tmp_path, monkeypatch, caplog):
    import errno

    paths = fake_files(tmp_path / "img", 3)
    decoder = CountingDecoder()
    cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    real_load = np.load

    def no_private_maps(file, mmap_mode=None, **kwargs):  # strict overcommit refuses "c" maps
        if mmap_mode == "c":
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_load(file, mmap_mode=mmap_mode, **kwargs)

    monkeypatch.setattr(pixel_cache.np, "load", no_private_maps)
    pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts == {"hits": 3, "decoded": 0} and not pixels.flags.writeable  # read-only map instead

    def no_maps(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(pixel_cache.np, "load", no_maps)
    with caplog.at_level(logging.WARNING, logger="tfpipeline.data.pixel_cache"):
        pixels, counts = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)
    assert counts["decoded"] == 3 and "cannot map" in caplog.text and "damaged" not in caplog.text
    np.testing.assert_array_equal(pixels, decoder.pixels(paths))
    monkeypatch.setattr(pixel_cache.np, "load", real_load)
    hits = cache_fill.cached_pixels(paths, PIXEL_SETTINGS, decoder)[1]["hits"]
    assert hits == 3  # the chunk is still there
