"""Out-of-domain test sets made from real faces: `tfpipeline data synth-fakes`.

A detector scored only on its own dataset's forgeries says nothing about forgeries made another
way. Given a folder of real faces the model never trained on (a held-out split's reals), this
writes a two-class folder, `real/` and `fake/`, where every real face has a forged twin made by
the self-blender of :mod:`tfpipeline.data.blend`. `tfpipeline evaluate RUN --split all --data
OUT` then scores the pair. Each real is decoded and resized exactly as its twin is and written
in the same format (PNG), so neither the file format nor the resampling can give the answer.

Kinds: `self` blends a transformed copy of the same face into a region (SBI); `other` puts a
colour-matched region of another face of the folder there (a local face swap). The limits:
for a model trained with `--synth-fakes` these forgeries are in-domain, not out of it; and
they are blunter than expert composites such as CIPLAB's (see the blender's sample grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfpipeline.errors import UserError

KINDS = {"self": 0.0, "other": 1.0}  # kind -> the blender's share of fakes from another face
_BATCH = 32


def write_synthetic_pairs(
    reals: str | Path,
    out: str | Path,
    *,
    kind: str = "self",
    size: tuple[int, int] = (256, 256),
    seed: int = 101,
) -> dict:
    """Write `out/real/NAME.png` and its forged twin `out/fake/NAME.png` for every image of `reals`.

    Args:
        reals: a folder of real face images (searched recursively).
        out: a new or empty folder.
        kind: `self` or `other` (see the module docstring).
        size: (height, width) every image is resized to (stretched), reals and fakes alike.
        seed: the blender's seed; the same seed writes the same files.

    Returns:
        The manifest also written to `out/synth.json`: source, kind, size, seed, pairs and the
        mean share of pixels the forgeries changed.

    Raises:
        UserError: unknown kind, no images in `reals`, `out` not empty, or two images that would
            be written under the same name.
    """
    import tensorflow as tf

    from tfpipeline.config import DataConfig
    from tfpipeline.data.blend import SelfBlend
    from tfpipeline.data.pipeline import decode_files
    from tfpipeline.data.sources import list_class_folder

    if kind not in KINDS:
        raise UserError(f"data synth-fakes: unknown --kind '{kind}' (known: {', '.join(KINDS)})")
    reals, out = Path(reals), Path(out)
    if not reals.is_dir():
        raise UserError(f"data synth-fakes: {reals} is not a folder of real images")
    paths, _ = list_class_folder(reals)
    if not paths:
        raise UserError(f"data synth-fakes: no images (.jpg, .png, .bmp, .gif) in {reals}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"data synth-fakes: {out} is not empty; give a new folder")
    names = [Path(p).stem + ".png" for p in paths]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"data synth-fakes: files in {reals} would share the names {', '.join(clashes[:5])}")

    pixels = decode_files(paths, DataConfig(data=str(reals), image_size=size))
    blender = SelfBlend(1.0, real_index=1, fake_index=0, seed=seed, other_share=KINDS[kind])
    changed = 0.0
    for folder in ("real", "fake"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), _BATCH):
        batch = pixels[start : start + _BATCH]
        fakes, _, _ = blender(tf.constant(batch), tf.ones(len(batch), tf.int32))
        fakes = tf.cast(tf.round(fakes), tf.uint8).numpy()
        changed += float(np.sum(np.any(fakes != batch, axis=-1)))
        for name, real, fake in zip(names[start : start + _BATCH], batch, fakes, strict=True):
            tf.io.write_file(str(out / "real" / name), tf.io.encode_png(real))
            tf.io.write_file(str(out / "fake" / name), tf.io.encode_png(fake))
    manifest = {
        "source": str(reals.resolve()),
        "kind": kind,
        "size": list(size),
        "seed": seed,
        "pairs": len(paths),
        "changed_pixel_share": round(changed / (len(paths) * size[0] * size[1]), 4),
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
