"""Face regions: the CIPLAB file-name labels and the average face layout.

CIPLAB's "Real and Fake Face Detection" fakes are expert composites whose file names say how hard
they are and which regions were replaced: `easy_100_1111.jpg` is difficulty `easy`, and the four
mask digits are left eye, right eye, nose, mouth (1 = edited). :func:`parse_region_name` reads
that; files without the pattern carry no region label.

:data:`FACE_LAYOUT` gives where those regions sit in these centred, roughly aligned portraits,
as fractions of the image side (centre x, centre y, half width, half height). It was measured on
the 811 real training faces of `real_and_fake_face` (256x256): the mean grey face, smoothed, is
darkest in the eye band at rows 110-128 (y = 0.43-0.50, centre 0.46) with the brightest point of
the band, the nose bridge, at x = 0.50 and the eye centres at x = 0.36 / 0.64 (where the eyes
of the mean face are); brightest down the centre column at y = 0.59 (the nose) and darkest again
at y = 0.80 (the mouth). Faces vary in size and position, so users of the layout (the
self-blended fake generator) jitter these boxes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REGIONS = ("left_eye", "right_eye", "nose", "mouth")
DIFFICULTIES = ("easy", "mid", "hard")
_NAME = re.compile(r"^(easy|mid|hard)_\d+_([01]{4})$", re.IGNORECASE)

# region -> (centre x, centre y, half width, half height), fractions of the image side.
FACE_LAYOUT: dict[str, tuple[float, float, float, float]] = {
    "left_eye": (0.36, 0.46, 0.11, 0.07),
    "right_eye": (0.64, 0.46, 0.11, 0.07),
    "nose": (0.50, 0.60, 0.09, 0.10),
    "mouth": (0.50, 0.79, 0.14, 0.07),
}


@dataclass(frozen=True)
class RegionLabel:
    """What a CIPLAB file name says: difficulty and which regions were edited."""

    difficulty: str
    edited: tuple[bool, bool, bool, bool]  # in REGIONS order

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(name for name, on in zip(REGIONS, self.edited, strict=True) if on)


def parse_region_name(path: str | Path) -> RegionLabel | None:
    """The difficulty and edited regions of a CIPLAB-style file name; None for other names."""
    match = _NAME.match(Path(path).stem)
    if not match:
        return None
    difficulty, digits = match.group(1).lower(), match.group(2)
    return RegionLabel(difficulty, tuple(d == "1" for d in digits))


def difficulty_of(path: str | Path) -> str | None:
    """`easy`, `mid`, `hard` for CIPLAB fakes; None for everything else (reals included)."""
    label = parse_region_name(path)
    return label.difficulty if label else None
