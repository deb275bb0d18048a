"""Stand-ins shared by the pixel-cache tests (test_pixel_cache.py, test_cache_fill.py): decode
settings, tiny files, and a decoder whose pixels are each file's first byte and which counts
what it decodes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tfpipeline.data.pixel_cache import DecodeSettings

PIXEL_SETTINGS = DecodeSettings((8, 8), 3, "stretch", "bilinear")


def fake_files(folder: Path, n: int) -> list[str]:
    """`n` tiny non-image files whose first byte is their index (the store keys files by their
    content, size and time; it never decodes them itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.bin"
        path.write_bytes(bytes([i]) * 10)
        paths.append(str(path))
    return paths


class CountingDecoder:
    """A stand-in decoder whose pixels depend on the file's bytes; counts what it decodes."""

    def __init__(self):
        self.decoded = 0
        self.lock = threading.Lock()

    def __call__(self, paths):
        """Batches of at most two images, decoded as they are asked for, like the training decoder's."""
        for start in range(0, len(paths), 2):
            batch = paths[start : start + 2]
            with self.lock:
                self.decoded += len(batch)
            yield self.pixels(batch)

    @staticmethod
    def pixels(paths):
        return np.stack([np.full((8, 8, 3), open(p, "rb").read()[0], np.uint8) for p in paths])
