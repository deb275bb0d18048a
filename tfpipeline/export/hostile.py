"""Hostile payloads for checking that a served model refuses what it should: decompression bombs.

Each function returns a complete, valid file (a decoder without limits decodes it in full) that
is small on the wire and enormous once decoded, built in milliseconds without ever holding the
pixels:

- :func:`png_bomb`: an RGB PNG of zeros (a 20,000 x 20,000 one is 1.2 MB and decodes to 1.2 GB);
- :func:`jpeg_bomb`: a baseline greyscale JPEG whose Huffman tables give every 8x8 block a
  two-bit code (30,000 x 30,000 in 3.5 MB);
- :func:`gif_bomb`: a GIF whose one frame is LZW-compressed zeros (20,000 x 20,000 in 0.3 MB).

Used by the tests and `benchmarks/serving_load.py`; useful against any deployment
(`model.signatures["serving_default"](image_bytes=tf.constant([png_bomb(20_000, 20_000)]))`
must fail at once with INVALID_ARGUMENT).
"""

from __future__ import annotations

import struct
import zlib

_CHUNK = 1 << 20


def _zlib_zeros(size: int) -> bytes:
    """A zlib stream of `size` zero bytes, from one compressed 1 MiB block repeated.

    A full flush ends each block byte-aligned with the compressor's history reset, so every
    1 MiB of zeros compresses to the same bytes; the Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    """
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block.compress(bytes(_CHUNK)) + block.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = tail.compress(bytes(size % _CHUNK)) + tail.flush(zlib.Z_FINISH)
    checksum = ((size % 65521) << 16) | 1
    return b"\x78\xda" + block * (size // _CHUNK) + tail + struct.pack(">I", checksum)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG of `width` x `height` black pixels (each row: filter 0, zeros)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = _zlib_zeros(height * (1 + 3 * width))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_bomb(width: int, height: int) -> bytes:
    """A valid baseline greyscale JPEG of `width` x `height` mid-grey pixels.

    Both Huffman tables hold one symbol with the one-bit code 0 (DC difference 0; AC end of
    block), so each 8x8 block is two zero bits and the scan is all zero bytes.
    """
    blocks = -(-width // 8) * -(-height // 8)
    one_code = bytes([1] + [0] * 15)  # BITS: one code of length 1
    return (
        b"\xff\xd8"
        + _segment(0xDB, b"\x00" + bytes([1] * 64))  # quantisation table 0, all ones
        + _segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + _segment(0xC4, b"\x00" + one_code + b"\x00")  # DC table 0: symbol 0
        + _segment(0xC4, b"\x10" + one_code + b"\x00")  # AC table 0: symbol 0x00 (EOB)
        + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + bytes(-(-2 * blocks // 8))
        + b"\xff\xd9"
    )


def _lzw_zeros(pixels: int, code_size: int = 2) -> bytes:
    """GIF LZW codes for `pixels` zero indices, as a plain encoder writes them.

    For a constant run the table only ever holds runs of zeros, so the encoder emits runs of
    length 1, 2, 3, ... (codes 0, end+1, end+2, ...) until the table is full, then a clear
    code; this emits those codes directly, one per run rather than one per pixel.
    """
    clear, end = 1 << code_size, (1 << code_size) + 1
    out, acc, bits = bytearray(), 0, 0

    def emit(code: int, width: int) -> None:
        nonlocal acc, bits
        acc |= code << bits
        bits += width
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8

    width, next_code, longest = code_size + 1, end + 1, 1
    emit(clear, width)
    while pixels > longest:
        emit(0 if longest == 1 else end + longest - 1, width)
        pixels -= longest
        if next_code < 4096:
            next_code, longest = next_code + 1, longest + 1
            if next_code > (1 << width) and width < 12:
                width += 1
        else:
            emit(clear, width)
            width, next_code, longest = code_size + 1, end + 1, 1
    if pixels:
        emit(0 if pixels == 1 else end + pixels - 1, width)
    emit(end, width)
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def gif_bomb(width: int, height: int, screen: tuple[int, int] | None = None) -> bytes:
    """A valid one-frame GIF of `width` x `height` black pixels.

    Args:
        screen: (width, height) of the logical screen, when it should differ from the frame
            (a small screen hiding a huge frame).
    """
    screen_w, screen_h = screen or (width, height)
    codes = _lzw_zeros(width * height)
    data = b"".join(bytes([len(codes[i : i + 255])]) + codes[i : i + 255] for i in range(0, len(codes), 255))
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", screen_w, screen_h, 0x80, 0, 0)  # a global table of 2 colours
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02"
        + data
        + b"\x00;"
    )
