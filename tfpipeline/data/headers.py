"""Header-first image guards: what an encoded image declares, checked before it is decoded.

A 1 MB PNG can declare 20,000 x 20,000 pixels (1.2 GB decoded). :func:`guard_header` reads the
dimensions an image declares from its header bytes (JPEG: libjpeg's header reader; PNG: IHDR;
GIF: the logical screen and the first frame's descriptor; BMP: the info header) and refuses,
with an InvalidArgumentError naming the input, the declared size and the limit, an image above
`max_pixels` or `max_side` before any pixel buffer is allocated. :func:`decode_gif_frame` cuts a
GIF after its first frame, so an animation of a thousand frames decodes as fast as a still.

TensorFlow ops only, so the guards run inside tf.data and inside exported SavedModels;
:mod:`tfpipeline.data.decode` applies them to every decode.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

# The data stage's limits: Pillow's decompression-bomb threshold and a side no photo has. The
# bad-file check reports larger files as `too-large`, and the decode below refuses them, so a
# file that passed the check always decodes. Exports set their own (`tfpipeline export --max-*`).
DATA_MAX_PIXELS = 89_478_485
DATA_MAX_SIDE = 30_000

FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP")  # indexed by the kind image_kind() returns
UNKNOWN, JPEG, PNG, GIF, BMP = range(len(FORMATS))
NOT_AN_IMAGE = "is not a decodable image (expected JPEG, PNG, BMP or GIF bytes)"
_MAGIC = ((PNG, b"\x89PNG\r\n\x1a\n"), (GIF, b"GIF87a"), (GIF, b"GIF89a"), (BMP, b"BM"))


class Header(NamedTuple):
    """The size an image declares: scalar tensors `kind` (int32, index into FORMATS), `height` and
    `width` (int64; for a GIF its logical screen, see :func:`gif_first_frame` for the frame) and
    `valid` (bool: the header is complete and well formed)."""

    kind: tf.Tensor
    height: tf.Tensor
    width: tf.Tensor
    valid: tf.Tensor


def image_kind(contents: tf.Tensor) -> tf.Tensor:
    """int32 scalar: JPEG, PNG, GIF, BMP or UNKNOWN, from the file's signature bytes."""
    kind = tf.where(tf.io.is_jpeg(contents), JPEG, UNKNOWN)
    for code, magic in _MAGIC:
        kind = tf.where(tf.equal(tf.strings.substr(contents, 0, len(magic)), magic), code, kind)
    return kind


def _number(head: tf.Tensor, start: int, size: int, big_endian: bool = False) -> tf.Tensor:
    """The unsigned integer in `head[start:start + size]` (int64)."""
    order = range(start, start + size) if big_endian else reversed(range(start, start + size))
    value = tf.constant(0, tf.int64)
    for i in order:
        value = value * 256 + head[i]
    return value


def read_bytes(contents: tf.Tensor, start: Any, count: int, length: tf.Tensor | None = None) -> tf.Tensor:
    """`contents[start:start + count]` as int64 [count], zeros past the end (`length`: of
    `contents`, int64, when known). A few ops, without copying the whole file."""
    length = tf.cast(tf.strings.length(contents), tf.int64) if length is None else length
    piece = tf.strings.substr(contents, tf.minimum(tf.cast(start, tf.int64), length), count)
    piece = tf.strings.substr(tf.strings.join([piece, b"\0" * count]), 0, count)
    return tf.cast(tf.io.decode_raw(piece, tf.uint8), tf.int64)


def _ints(*values: int) -> tuple[tf.Tensor, ...]:
    return tuple(tf.constant(v, tf.int64) for v in values)


_ONE_FILE = [tf.TensorSpec([], tf.string)]
_SCAN = 65_536  # bytes searched for a JPEG's start of scan: the most one APPn segment can hold


def jpeg_header_complete(contents: tf.Tensor) -> tf.Tensor:
    """bool: libjpeg's header reader has a complete start-of-scan (SOS) segment to reach.

    Splits the first 64 KB at every FF DA marker (one C++ pass, not a walk segment by segment)
    and asks whether any is followed by a plausible SOS length (>= 8) whose segment fits in the
    bytes. False only when none is, in a file no longer than that (a header cut short, or one
    ending before its scan), so a valid JPEG is never refused here; a longer file without one
    there is left to libjpeg, whose own error then names no input.
    """
    n = tf.strings.length(contents)
    pieces = tf.strings.split(tf.strings.substr(contents, 0, _SCAN), sep=b"\xff\xda")
    starts = tf.cumsum(tf.strings.length(pieces)[:-1] + 2) - 2  # offsets of the markers
    after = pieces[1:]  # each begins with its marker's segment length (big-endian)
    fields = tf.strings.substr(tf.strings.join([tf.strings.substr(after, 0, 2), b"\0\0"]), 0, 2)
    field = tf.reshape(tf.cast(tf.io.decode_raw(fields, tf.uint8), tf.int32), [-1, 2])
    length = 256 * field[:, 0] + field[:, 1]
    fits = (tf.strings.length(after) >= 2) & (length >= 8) & (starts + 2 + length <= n)
    return tf.reduce_any(fits) | (n > _SCAN)


def read_header(contents: tf.Tensor, kind: tf.Tensor) -> Header:
    """Read the declared size from the header bytes alone (no pixel is decoded).

    JPEG: libjpeg's own header reader (`tf.io.extract_jpeg_shape`), once
    :func:`jpeg_header_complete` says it has a header to read. PNG: IHDR, which must come
    first. GIF: the logical screen. BMP: as TensorFlow's decoder reads it (int32 width and
    height at bytes 18 and 22, a negative height meaning top-down rows).
    """
    length = tf.cast(tf.strings.length(contents), tf.int64)
    head = read_bytes(contents, 0, 32)
    zero, true = tf.constant(0, tf.int64), tf.constant(True)

    def jpeg():
        complete = jpeg_header_complete(contents)
        shape = tf.cond(
            complete, lambda: tf.io.extract_jpeg_shape(contents, tf.int64), lambda: tf.zeros([3], tf.int64)
        )
        return shape[0], shape[1], complete

    def png():  # signature, then the IHDR chunk: length, b"IHDR", width, height (big-endian)
        ihdr = tf.reduce_all(tf.equal(head[12:16], tf.constant(list(b"IHDR"), tf.int64)))
        return _number(head, 20, 4, True), _number(head, 16, 4, True), (length >= 24) & ihdr

    def gif():  # b"GIF89a", then the logical screen: width, height (little-endian), flags, ...
        return _number(head, 8, 2), _number(head, 6, 2), length >= 13

    def bmp():
        width, height = (tf.bitcast(tf.cast(_number(head, i, 4), tf.uint32), tf.int32) for i in (18, 22))
        return tf.abs(tf.cast(height, tf.int64)), tf.cast(width, tf.int64), length >= 26

    branches = [lambda: (zero, zero, ~true), jpeg, png, gif, bmp]  # in FORMATS order
    height, width, complete = tf.switch_case(kind, branches)
    sized = tf.equal(kind, GIF) | ((height >= 1) & (width >= 1))  # a GIF's frame is checked later
    return Header(kind, height, width, complete & sized)


class GifFrame(NamedTuple):
    """A GIF's first frame: its descriptor's `height` and `width` (int64), `valid` (bool: the
    blocks before its image data are well formed) and `end` (int64: bytes through its image
    data, or -1 when the file ends inside that data, which is then decoded as it is)."""

    height: tf.Tensor
    width: tf.Tensor
    valid: tf.Tensor
    end: tf.Tensor


# A tf.function, so that an eager caller (the data check's second look at a failed file) runs
# the walk as a graph too, not op by op from Python.
@tf.function(input_signature=_ONE_FILE, autograph=False)
def gif_first_frame(contents: tf.Tensor) -> GifFrame:
    """Walk a GIF's blocks to the end of its first frame (a `tf.while_loop` over byte offsets).

    After the header, logical screen descriptor and optional global colour table come extension
    blocks (0x21, label, sub-blocks), then an image descriptor (0x2C, left, top, width, height,
    flags), an optional local colour table, the LZW code size and the image data sub-blocks
    (a length byte, then that many bytes; a zero length ends them). A step passes a block
    header, or a run of up to 1,024 sub-blocks of one length (encoders write 255-byte ones), so
    a legitimate GIF takes a few steps per block and an animation stops after its first frame.
    A GIF needing more than 4,096 steps (sub-blocks of varying lengths, crafted to be slow) is
    reported not `valid`.
    """
    data = tf.io.decode_raw(contents, tf.uint8)
    n = tf.size(data, out_type=tf.int64)
    zero, one, two, three, four = _ints(0, 1, 2, 3, 4)

    def table(flags):  # bytes of the colour table a flags byte announces
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(two, flags % 8), 0)

    def run_end(pos, length):  # past the sub-blocks from `pos` that all have length `length`
        starts = data[pos : pos + 1024 * (length + 1) : length + 1]
        same = tf.cast(tf.equal(tf.cast(starts, tf.int64), length), tf.int64)
        return pos + (length + 1) * tf.reduce_sum(tf.math.cumprod(same))

    # phase: 0 between blocks, 1 in an extension's sub-blocks, 2 in the first frame's image data,
    # 3 done (past its terminator), 4 malformed (an unknown block, or the trailer, before a frame).
    def step(pos, phase, height, width):
        here = read_bytes(contents, pos, 10, n)  # a block's first byte; an image descriptor
        value = here[0]
        between, last = tf.equal(phase, 0), tf.equal(value, 0)
        extension = between & tf.equal(value, 0x21)
        image = between & tf.equal(value, 0x2C) & (pos + 11 <= n)
        past_image = pos + 11 + table(here[9])  # descriptor, local colour table, code size
        in_block = tf.where(last, pos + 1, run_end(pos, tf.maximum(value, 1)))
        pos_next = tf.where(extension, pos + 2, tf.where(image, past_image, in_block))
        in_block = tf.where(last, tf.where(tf.equal(phase, 1), zero, three), phase)
        phase_next = tf.where(between, tf.where(extension, one, tf.where(image, two, four)), in_block)
        height = tf.where(image, here[7] + 256 * here[8], height)
        width = tf.where(image, here[5] + 256 * here[6], width)
        return pos_next, phase_next, height, width

    pos, phase, height, width = tf.while_loop(
        lambda pos, phase, *_: (phase < 3) & (pos < n),
        step,
        (13 + table(read_bytes(contents, 10, 1)[0]), zero, zero, zero),
        maximum_iterations=4096,
    )
    ended = tf.equal(phase, 3) | (tf.equal(phase, 2) & (pos >= n))  # not cut off by the step limit
    return GifFrame(
        height, width, ended & (height >= 1) & (width >= 1), tf.where(tf.equal(phase, 3), pos, -one)
    )


def require(condition: tf.Tensor, *message: Any) -> tf.Operation | None:
    """InvalidArgumentError(message) unless `condition`: raised at once when eager, else an Assert
    op (failing with "assertion failed: [message]") for later ops to depend on. `message`: str and
    (int or string) tensor parts, joined."""
    parts = [m if isinstance(m, str) or m.dtype == tf.string else tf.strings.as_string(m) for m in message]
    if not tf.executing_eagerly():
        return tf.debugging.Assert(condition, [tf.strings.join(parts)])
    if not bool(condition):
        raise tf.errors.InvalidArgumentError(None, None, tf.strings.join(parts).numpy().decode())
    return None


def _after(checks: list) -> Any:
    return tf.control_dependencies([c for c in checks if c is not None])


def size_checks(where: Any, what: Any, height: tf.Tensor, width: tf.Tensor, max_pixels: int, max_side: int):
    """The `max_pixels` and `max_side` checks of a declared size (list of :func:`require` ops)."""
    pixels = height * width
    declares = [where, " declares ", width, "x", height, " pixels"]
    return [
        require(pixels <= max_pixels, *declares, " (", pixels, ") in its ", what,
                f" header, more than max_pixels {max_pixels}"),
        require(tf.maximum(height, width) <= max_side, *declares, " in its ", what,
                f" header, a side longer than max_side {max_side}"),
    ]  # fmt: skip


def guard_header(
    contents: tf.Tensor,
    where: Any = "image",
    *,
    max_pixels: int = DATA_MAX_PIXELS,
    max_side: int = DATA_MAX_SIDE,
    max_bytes: int | None = None,
) -> Header:
    """Read `contents`' header and refuse the image unless it is within the limits.

    Checks, in order: length <= `max_bytes` (when given), a JPEG/PNG/GIF/BMP signature, a
    complete header, width x height <= `max_pixels` and both sides <= `max_side`.

    Args:
        contents: scalar string tensor with the encoded file.
        where: how messages name the input (str or string tensor, e.g. "input image_bytes[3]").

    Returns:
        The :class:`Header`; its tensors depend on every check, so whatever is computed from them
        (the decode) runs only for an accepted image.

    Raises:
        tf.errors.InvalidArgumentError (at run time): "<where> is N bytes, more than max_bytes
            M", "<where> is not a decodable image ...", "<where> has a truncated or malformed PNG
            header", "<where> declares 20000x20000 pixels (400000000) in its PNG header, more
            than max_pixels M" or "... a side longer than max_side M".
    """
    checks = []
    if max_bytes is not None:
        size = tf.strings.length(contents)
        checks.append(
            require(size <= max_bytes, where, " is ", size, f" bytes, more than max_bytes {max_bytes}")
        )
    with _after(checks):
        kind = image_kind(contents)
        checks.append(require(tf.not_equal(kind, UNKNOWN), where, " ", NOT_AN_IMAGE))
    with _after(checks):
        header = read_header(contents, kind)
        name = tf.gather(tf.constant(FORMATS), kind)
        checks.append(require(header.valid, where, " has a truncated or malformed ", name, " header"))
    with _after(checks):
        checks += size_checks(where, name, header.height, header.width, max_pixels, max_side)
    with _after(checks):
        return Header(*(tf.identity(t) for t in header))


def decode_gif_frame(contents: tf.Tensor, where: Any, max_pixels: int, max_side: int) -> tf.Tensor:
    """A GIF's first frame, uint8 [H, W, 3], decoded without reading the frames after it.

    The frame's own size is checked, then the bytes are cut after its image data and closed with
    the trailer (0x3B), so the decoder never materialises the other frames. TensorFlow sizes a
    GIF by its largest frame: for the rare GIF whose later frames are larger than its first, the
    result is the first frame's rectangle, not the larger canvas the whole file would give.
    """
    frame = gif_first_frame(contents)
    checks = [require(frame.valid, where, " has a truncated or malformed GIF header")]
    with _after(checks):
        checks += size_checks(where, "GIF first-frame", frame.height, frame.width, max_pixels, max_side)
    with _after(checks):
        end = tf.cast(frame.end, tf.int32)
        cut = tf.cond(
            end >= 0, lambda: tf.strings.join([tf.strings.substr(contents, 0, end), b";"]), lambda: contents
        )
        return tf.io.decode_gif(cut)[0]
