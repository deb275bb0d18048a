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
    prefixes = tf.strings.substr(contents, [0] * len(_MAGIC), [len(magic) for _, magic in _MAGIC])
    matches = tf.equal(prefixes, [magic for _, magic in _MAGIC])
    other = tf.reduce_max(tf.where(matches, [code for code, _ in _MAGIC], UNKNOWN))
    return tf.where(tf.io.is_jpeg(contents), JPEG, other)


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
    pieces = tf.raw_ops.StringSplitV2(
        input=tf.strings.substr(contents, 0, _SCAN)[None], sep=b"\xff\xda"
    ).values
    markers = tf.cumsum(tf.strings.length(pieces) + 2)[:-1] - 2  # offsets of the FF DA markers
    # Each marker's segment length (2 bytes, big-endian), zeros past the end of the file.
    fields = tf.strings.substr(
        tf.strings.join([tf.strings.substr(contents, markers + 2, tf.fill(tf.shape(markers), 2)), b"\0\0"]),
        0,
        2,
    )
    length = tf.reduce_sum(
        tf.reshape(tf.cast(tf.io.decode_raw(fields, tf.uint8), tf.int32), [-1, 2]) * [256, 1], 1
    )
    return tf.reduce_any((length >= 8) & (markers + 2 + length <= n)) | (n > _SCAN)


# The sizes PNG, GIF and BMP headers declare, all read at once from their first 32 bytes as
# (height, width) pairs: the byte offsets of each number, lowest first (32: a zero byte).
_SIZE_BYTES = [
    [23, 22, 21, 20], [19, 18, 17, 16],  # PNG IHDR: width at 16, height at 20, big-endian
    [8, 9, 32, 32], [6, 7, 32, 32],  # GIF logical screen: width at 6, height at 8, little-endian
    [22, 23, 24, 25], [18, 19, 20, 21],  # BMP info header: int32 width at 18, height at 22
]  # fmt: skip
_BMP_SIGNED = [False, False, False, False, True, True]
_MIN_LENGTH = [2**62, 0, 24, 13, 26]  # bytes a header needs, by kind (JPEG's: see its scan)


def read_header(contents: tf.Tensor, kind: tf.Tensor) -> Header:
    """Read the declared size from the header bytes alone (no pixel is decoded).

    JPEG: libjpeg's own header reader (`tf.io.extract_jpeg_shape`), once
    :func:`jpeg_header_complete` says it has a header to read. PNG: IHDR, which must come
    first. GIF: the logical screen. BMP: as TensorFlow's decoder reads it (int32 width and
    height at bytes 18 and 22, a negative height meaning top-down rows).

    Every format's numbers come from one gather over the first 32 bytes (no branch per format):
    a few dozen graph nodes, since building and optimising the decode graph is a fixed cost of
    every pipeline and of every exported model's first call.
    """
    length = tf.cast(tf.strings.length(contents), tf.int64)
    head = tf.concat([read_bytes(contents, 0, 32, length), [0]], 0)  # [32]: the zero _SIZE_BYTES pads with
    numbers = tf.reduce_sum(tf.gather(head, _SIZE_BYTES) * [1, 256, 65_536, 16_777_216], 1)
    numbers = tf.where(_BMP_SIGNED & (numbers >= 2**31), numbers - 2**32, numbers)
    jpeg = tf.equal(kind, JPEG)
    complete = jpeg_header_complete(contents)
    jpeg_hw = tf.cond(
        jpeg & complete,
        lambda: tf.io.extract_jpeg_shape(contents, tf.int64)[:2],
        lambda: tf.zeros([2], tf.int64),
    )
    sizes = tf.reshape(tf.concat([[0, 0], jpeg_hw, numbers], 0), [len(FORMATS), 2])  # by kind
    height, width = tf.unstack(tf.gather(sizes, kind))
    height = tf.abs(height)  # BMP: negative for top-down rows; PNG and GIF sizes are unsigned
    ihdr = tf.reduce_all(tf.equal(head[12:16], list(b"IHDR"))) | tf.not_equal(kind, PNG)
    sized = tf.equal(kind, GIF) | ((height >= 1) & (width >= 1))  # a GIF's frame is checked later
    valid = (length >= tf.gather(_MIN_LENGTH, kind)) & (complete | ~jpeg) & ihdr & sized
    return Header(kind, height, width, valid)


class GifFrame(NamedTuple):
    """A GIF's first frame: its descriptor's `height` and `width` (int64), `valid` (bool: the
    blocks before its image data are well formed) and `end` (int64: bytes through its image
    data, or -1 when the file ends inside that data, which is then decoded as it is)."""

    height: tf.Tensor
    width: tf.Tensor
    valid: tf.Tensor
    end: tf.Tensor


# A tf.function, so that an eager caller (the data check's second look at a failed file) runs
# the walk as a graph too, not op by op from Python. Never inlined into its caller: its while loop
# is then instantiated when the first GIF comes, not by every decoding pipeline (0.03-0.08 s less
# of a pipeline's ~0.45 s start on an AMD EPYC Zen 3).
@tf.function(input_signature=_ONE_FILE, autograph=False, experimental_attributes={"_noinline": True})
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


Refusal = tuple[tf.Tensor, tf.Tensor]  # (bool: the check fails, string: why)


def refuse_first(refusals: list[Refusal]) -> tf.Operation | None:
    """One :func:`require` for a list of checks: the message of the first that fails.

    One Assert over a chain of selects keeps the guard a few dozen nodes (a :func:`require` per
    check, each with its own message ops, was most of the decode graph)."""
    message = tf.constant("")
    for fails, why in reversed(refusals):
        message = tf.where(fails, why, message)
    return require(tf.equal(message, ""), message)


def _why(where: Any, template: str, numbers: list[tf.Tensor], *rest: Any) -> tf.Tensor:
    """`where` + `template` with `numbers` in its `{}` + `rest` (str or string tensors)."""
    return tf.strings.join([where, tf.strings.format(template, numbers), *rest])


def size_refusals(where: Any, what: Any, height: tf.Tensor, width: tf.Tensor, max_pixels: int, max_side: int):
    """The `max_pixels` and `max_side` checks of a declared size (:data:`Refusal` list)."""
    pixels = height * width
    too_many = _why(
        where,
        " declares {}x{} pixels ({}) in its ",
        [width, height, pixels],
        what,
        f" header, more than max_pixels {max_pixels}",
    )
    too_long = _why(
        where,
        " declares {}x{} pixels in its ",
        [width, height],
        what,
        f" header, a side longer than max_side {max_side}",
    )
    return [(pixels > max_pixels, too_many), (tf.maximum(height, width) > max_side, too_long)]


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
    refusals = []
    if max_bytes is not None:
        size = tf.strings.length(contents)
        refusals.append(
            (size > max_bytes, _why(where, " is {} bytes", [size], f", more than max_bytes {max_bytes}"))
        )
    header = read_header(contents, image_kind(contents))
    name = tf.gather(FORMATS, header.kind)
    refusals += [
        (tf.equal(header.kind, UNKNOWN), tf.strings.join([where, " " + NOT_AN_IMAGE])),
        (~header.valid, tf.strings.join([where, " has a truncated or malformed ", name, " header"])),
        *size_refusals(where, name, header.height, header.width, max_pixels, max_side),
    ]
    with _after([refuse_first(refusals)]):
        return Header(*(tf.identity(t) for t in header))


def decode_gif_frame(contents: tf.Tensor, where: Any, max_pixels: int, max_side: int) -> tf.Tensor:
    """A GIF's first frame, uint8 [H, W, 3], decoded without reading the frames after it.

    The frame's own size is checked, then the bytes are cut after its image data and closed with
    the trailer (0x3B), so the decoder never materialises the other frames. TensorFlow sizes a
    GIF by its largest frame: for the rare GIF whose later frames are larger than its first, the
    result is the first frame's rectangle, not the larger canvas the whole file would give.
    """
    frame = gif_first_frame(contents)
    refusals = [(~frame.valid, tf.strings.join([where, " has a truncated or malformed GIF header"]))]
    refusals += size_refusals(where, "GIF first-frame", frame.height, frame.width, max_pixels, max_side)
    with _after([refuse_first(refusals)]):
        end = tf.cast(frame.end, tf.int32)
        cut = tf.cond(
            end >= 0, lambda: tf.strings.join([tf.strings.substr(contents, 0, end), b";"]), lambda: contents
        )
        return tf.io.decode_gif(cut)[0]
