"""Serving limits: what an exported model refuses before it decodes anything.

A served model receives bytes from anyone who can reach it. A 1 MB PNG can declare 20,000 x
20,000 pixels (1.2 GB once decoded, several GB while resizing), a batch can hold thousands of
images, and a body can be arbitrarily large. The exported graph therefore checks each request
against these limits first (the header guard of :mod:`tfpipeline.data.decode` for the image
limits) and refuses it with an InvalidArgumentError naming the input, the size and the limit.

The defaults suit a face or photo classifier: 40 megapixels covers every phone and most
camera photos, 16,384 pixels a side covers panoramas of that size, 20 MB any such JPEG or PNG,
and 256 images a batch any reasonable client. Raise them at export time for larger images
(`tfpipeline export RUN --max-pixels 100000000 --max-side 30000 --max-bytes 60000000`); they
are written to metadata.json and the model card, and `tfpipeline predict` applies the same ones
to an export of any format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tfpipeline.errors import UserError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 16_384
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_BATCH = 256


@dataclass(frozen=True)
class ServingLimits:
    """The limits an export enforces (each a whole number >= 1).

    Attributes:
        max_pixels: width x height an encoded image may declare.
        max_side: pixels on either side of an encoded image.
        max_bytes: bytes of one encoded image.
        max_batch: images (encoded, or pixel arrays) in one call of any signature.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                option = "--" + item.name.replace("_", "-")
                raise UserError(f"{option} must be a whole number of at least 1, got {value!r}")

    @property
    def guard(self) -> dict[str, int]:
        """The keyword arguments of :func:`tfpipeline.data.decode.decode_image`'s header guard."""
        return {"max_pixels": self.max_pixels, "max_side": self.max_side, "max_bytes": self.max_bytes}

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ServingLimits:
        """Limits from metadata.json's `limits` (the defaults for an export written before limits
        existed, whose graph has none: the loader then applies the defaults itself).

        Raises:
            UserError: a value is not a whole number >= 1, or the key is unknown.
        """
        data = dict(data or {})
        unknown = set(data) - {item.name for item in fields(cls)}
        if unknown:
            raise UserError(f"metadata.json limits: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def describe(self) -> str:
        """One line for people: "40,000,000 pixels (16,384 a side) and 20,000,000 bytes an image,
        256 images a call"."""
        return (
            f"{self.max_pixels:,} pixels ({self.max_side:,} a side) and {self.max_bytes:,} bytes an "
            f"image, {self.max_batch:,} images a call"
        )
