"""The header guard of tfpipeline.data.decode: dimensions read from header bytes for every format,
truncated and malformed headers refused by name, limits refused before decoding, GIFs decoded
from their first frame only, and the same guard in the training pipeline and the data check.

Everything runs both eagerly and traced (`tf.function`, as in tf.data and the SavedModel).
"""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpipeline.config import DataConfig
from tfpipeline.data.check import MAX_PIXELS, MAX_SIDE, check_files
from tfpipeline.data.decode import decode_image
from tfpipeline.data.headers import (
    DATA_MAX_PIXELS,
    DATA_MAX_SIDE,
    NOT_AN_IMAGE,
    gif_first_frame,
    guard_header,
    jpeg_header_complete,
)
from tfpipeline.data.pipeline import decoded_images
from tfpipeline.data.split import Split
from tfpipeline.export.hostile import gif_bomb, jpeg_bomb, png_bomb

STRING = [tf.TensorSpec([], tf.string)]
TRACED_HEADER = tf.function(lambda c: tuple(guard_header(c, "input x[7]")), input_signature=STRING)
TRACED_DECODE = tf.function(lambda c: decode_image(c, 3, where="input x[7]"), input_signature=STRING)


def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    return np.clip(ramp + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def animated_gif(frames: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A GIF of `frames` frames, built in microseconds: a Pillow-encoded still's header, its image
    block as the first frame, then another still's image block repeated (under the first's
    palette: different colours, same structure)."""

    def blocks(contents: bytes) -> tuple[bytes, bytes]:  # (header and palette, image block)
        flags = contents[10]
        start = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        assert contents[start] == 0x2C and contents[-1:] == b";"
        return contents[:start], contents[start:-1]

    head, first = blocks(encode(picture(*size), "GIF"))
    _, other = blocks(encode(255 - picture(*size, seed=1), "GIF"))
    delay = b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms a frame
    return head + delay + first + (delay + other) * (frames - 1) + b";"


def refusal(contents: bytes, eager: bool) -> str:
    """The InvalidArgumentError message decoding `contents` gets, traced or eager."""
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        if eager:
            decode_image(tf.constant(contents), 3, where="input x[7]")
        else:
            TRACED_DECODE(tf.constant(contents))
    return caught.value.message


# --------------------------------------------------------------------------- header parsers


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"quality": 90}),
        ("JPEG", {"progressive": True, "exif": b"Exif\x00\x00" + bytes(300)}),
        ("PNG", {}),
        ("PNG", {"optimize": True}),
        ("GIF", {}),
        ("BMP", {}),
    ],
)
@pytest.mark.parametrize("size", [(37, 23), (23, 37), (300, 2)])
def test_header_size_of_real_files(fmt, options, size):
    contents = encode(picture(*size), fmt, **options)
    with Image.open(io.BytesIO(contents)) as opened:
        assert opened.size == size
    for header in (guard_header(tf.constant(contents)), TRACED_HEADER(tf.constant(contents))):
        kind, height, width, valid = (t.numpy() for t in header)
        assert (int(width), int(height), bool(valid)) == (*size, True)
    decoded = TRACED_DECODE(tf.constant(contents)).numpy()
    reference = tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()
    np.testing.assert_array_equal(decoded, reference)  # the guard changes nothing for valid files


def test_other_png_modes_and_a_top_down_bmp():
    gray16 = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    interlaced = picture(33, 17)
    files = {"16-bit": (gray16, {}), "interlaced": (Image.fromarray(interlaced), {"interlace": 1})}
    for image, options in files.values():
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **options)
        _, height, width, valid = TRACED_HEADER(tf.constant(buffer.getvalue()))
        assert (int(width), int(height), bool(valid)) == (*image.size, True)
    bmp = bytearray(encode(picture(21, 13), "BMP"))
    bmp[22:26] = struct.pack("<i", -13)  # rows stored top-down: TensorFlow reads |height|
    _, height, width, _ = TRACED_HEADER(tf.constant(bytes(bmp)))
    assert (int(width), int(height)) == (21, 13)
    assert TRACED_DECODE(tf.constant(bytes(bmp))).shape == (13, 21, 3)


@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize(
    ("fmt", "cuts"),
    [("JPEG", (3, 20)), ("PNG", (9, 16, 23)), ("GIF", (7, 12, 200)), ("BMP", (3, 20, 25))],
)
def test_truncated_headers_are_refused_by_name(fmt, cuts, eager):
    contents = encode(picture(64, 48), fmt)
    if fmt == "JPEG":  # also just before the start-of-scan segment, and inside it
        scan = contents.index(b"\xff\xda")
        cuts += (scan // 2, scan, scan + 5)
    if fmt == "GIF":  # also inside the first frame's image descriptor, after the colour table
        descriptor = 13 + 3 * 2 ** ((contents[10] & 7) + 1)
        assert contents[descriptor] == 0x2C
        cuts += (descriptor, descriptor + 6)
    for cut in cuts:
        message = refusal(contents[:cut], eager)
        assert f"input x[7] has a truncated or malformed {fmt} header" in message, (cut, message)


@pytest.mark.parametrize("eager", [True, False])
def test_non_images_and_wrong_chunks(eager):
    for contents in (b"", b"hello, I am text", b"\x00" * 64, b"GIF90a" + bytes(20), b"\x89PNX" + bytes(40)):
        assert f"input x[7] {NOT_AN_IMAGE}" in refusal(contents, eager)
    png = bytearray(encode(picture(8, 8), "PNG"))
    png[12:16] = b"tEXt"  # IHDR must come first
    assert "truncated or malformed PNG header" in refusal(bytes(png), eager)
    jpeg = encode(picture(8, 8), "JPEG")
    sos = jpeg.index(b"\xff\xda")
    assert "truncated or malformed JPEG header" in refusal(jpeg[:sos] + b"\xff\xd9", eager)  # EOI first


def test_jpeg_scan_search_finds_the_real_start_of_scan_among_false_markers():
    jpeg = encode(picture(16, 16), "JPEG")
    sos = jpeg.index(b"\xff\xda")
    # A comment segment whose text holds FF DA with an implausible length (2) before the real scan.
    decoy = b"\xff\xfe" + struct.pack(">H", 8) + b"x\xff\xda\x00\x02y"
    decoyed = jpeg[:2] + decoy + jpeg[2:]
    assert tf.io.extract_jpeg_shape(decoyed).numpy().tolist() == [16, 16, 3]  # still a valid JPEG
    complete = tf.function(jpeg_header_complete, input_signature=STRING)
    assert bool(complete(tf.constant(decoyed)))
    for cut in (sos + len(decoy), sos + len(decoy) + 2, sos + len(decoy) + 13):
        assert not bool(complete(tf.constant(decoyed[:cut]))), cut  # only the decoy, or a cut scan
    assert bool(complete(tf.constant(decoyed[: sos + len(decoy) + 14])))  # SOS length 12 fits
    assert not bool(complete(tf.constant(b"")))


@pytest.mark.parametrize("eager", [True, False])
def test_png_sizes_are_unsigned_and_bmp_widths_signed(eager):
    ihdr = struct.pack(">IIBBBBB", 4_000_000_000, 1, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + bytes(40)
    assert "declares 4000000000x1 pixels (4000000000) in its PNG header" in refusal(png, eager)
    bmp = bytearray(encode(picture(21, 13), "BMP"))
    bmp[18:22] = struct.pack("<i", -21)
    assert "input x[7] has a truncated or malformed BMP header" in refusal(bytes(bmp), eager)


# --------------------------------------------------------------------------- limits before decoding


@pytest.mark.parametrize("eager", [True, False])
def test_limits_name_the_input_the_size_and_the_limit(eager):
    png = encode(picture(40, 30), "PNG")

    def refused(**limits) -> str:
        def decode(contents):
            return decode_image(contents, 3, where="input x[7]", **limits)

        run = decode if eager else tf.function(decode, input_signature=STRING)
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            run(tf.constant(png))
        return caught.value.message

    over_pixels = refused(max_pixels=1199)
    assert (
        "input x[7] declares 40x30 pixels (1200) in its PNG header, more than max_pixels 1199" in over_pixels
    )
    over_side = refused(max_side=39)
    assert "input x[7] declares 40x30 pixels in its PNG header, a side longer than max_side 39" in over_side
    over_bytes = refused(max_bytes=len(png) - 1)
    assert f"input x[7] is {len(png)} bytes, more than max_bytes {len(png) - 1}" in over_bytes
    at_limit = decode_image(tf.constant(png), 3, max_pixels=1200, max_side=40, max_bytes=len(png))
    np.testing.assert_array_equal(at_limit.numpy(), tf.io.decode_png(png, channels=3).numpy())


@pytest.mark.parametrize(
    ("bomb", "size"),
    [(png_bomb, (20_000, 20_000)), (jpeg_bomb, (30_000, 30_000)), (gif_bomb, (20_000, 20_000))],
)
def test_bombs_are_refused_from_the_header_alone(bomb, size):
    contents = tf.constant(bomb(*size))
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"declares {size[0]}x{size[1]} pixels"):
        TRACED_DECODE(contents)
    assert time.perf_counter() - start < 0.5


def test_a_huge_frame_behind_a_small_gif_screen_is_refused():
    contents = gif_bomb(20_000, 20_000, screen=(10, 10))
    frame = gif_first_frame(tf.constant(contents))
    assert (int(frame.width), int(frame.height), bool(frame.valid)) == (20_000, 20_000, True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="in its GIF first-frame header, more than"):
        TRACED_DECODE(tf.constant(contents))


# --------------------------------------------------------------------------- GIF first frame


def test_gif_first_frame_only_whatever_the_number_of_frames():
    one, many = animated_gif(1), animated_gif(1000)
    with Image.open(io.BytesIO(many)) as opened:
        assert opened.n_frames == 1000
        first = np.asarray(opened.convert("RGB"))
    frame = gif_first_frame(tf.constant(many))
    assert (int(frame.width), int(frame.height), bool(frame.valid)) == (96, 64, True)
    assert 0 < int(frame.end) < len(many) / 500  # cut right after the first of 1000 frames
    decoded = TRACED_DECODE(tf.constant(many)).numpy()
    np.testing.assert_array_equal(decoded, first)
    np.testing.assert_array_equal(decoded, tf.io.decode_gif(many)[0].numpy())

    def seconds(contents: bytes) -> float:
        tensor = tf.constant(contents)
        TRACED_DECODE(tensor)
        return min(_timed(lambda: TRACED_DECODE(tensor)) for _ in range(3))

    assert seconds(many) < 3 * seconds(one) + 0.01  # not ~1000x: the other frames are never read


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_gif_walk_refuses_a_structure_crafted_to_be_slow():
    fragments = b"".join([b"\x01a", b"\x02ab"] * 200_000)  # sub-blocks of varying lengths
    contents = b"GIF89a" + bytes([1, 0, 1, 0, 0, 0, 0]) + b"\x2c" + bytes([0, 0, 0, 0, 1, 0, 1, 0, 0])
    contents += b"\x02" + fragments + b"\x00;"
    start = time.perf_counter()
    assert not bool(gif_first_frame(tf.constant(contents)).valid)
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated or malformed GIF header"):
        TRACED_DECODE(tf.constant(contents))
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- training path and check


def test_training_pipeline_refuses_a_bomb_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20_000, 20_000))
    split = Split(labels=np.array([0], np.int32), paths=(str(path),))
    dataset = decoded_images(split, DataConfig(image_size=(32, 32)))
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than max_pixels 89478485"):
        list(dataset)
    assert time.perf_counter() - start < 2.0


def test_the_check_and_the_decoder_share_their_limits(tmp_path):
    assert (MAX_PIXELS, MAX_SIDE) == (DATA_MAX_PIXELS, DATA_MAX_SIDE)
    widest = tmp_path / "widest.png"
    widest.write_bytes(png_bomb(DATA_MAX_SIDE, 1))
    too_wide = tmp_path / "too_wide.png"
    too_wide.write_bytes(png_bomb(DATA_MAX_SIDE + 1, 1))
    report = check_files([str(widest), str(too_wide)], target_hw=(8, 8))
    assert report.bad_paths == {str(too_wide)}
    assert decode_image(tf.io.read_file(str(widest)), 3).shape == (1, DATA_MAX_SIDE, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"a side longer than max_side {DATA_MAX_SIDE}"):
        decode_image(tf.io.read_file(str(too_wide)), 3)
