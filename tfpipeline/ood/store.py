"""A fitted detector and its files in the run folder.

Layout (`RUN/ood/`)::

    ood.json           method, threshold, accept share, tta, layout, counts, seconds, facts
    arrays.npz         the fitted arrays (Mahalanobis means and whitener; energy head)
    autoencoder.keras  the `autoencoder` method's network

A run without `RUN/ood/ood.json` (made before detection existed, or trained with `--ood none`)
simply has no detector: :func:`load_detector` returns None and every consumer carries on
without OOD outputs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.errors import UserError
from tfpipeline.ood.views import ViewLayout

OOD_DIR = "ood"
OOD_FILE = "ood.json"
ARRAYS_FILE = "arrays.npz"
AUTOENCODER_FILE = "autoencoder.keras"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Detector:
    """A fitted out-of-domain detector.

    Attributes:
        method: `mahalanobis`, `energy`, `msp` or `autoencoder`.
        threshold: images scoring at most this are accepted as in-domain.
        accept: the share of in-domain validation images the threshold was chosen to accept.
        tta: the test-time augmentation the views were computed with (the run's own).
        scaling: the model's pixel range (the autoencoder needs it).
        layout: columns of the view model (None for the autoencoder, which does not use it).
        arrays: fitted arrays, by name.
        facts: counts, seconds, shrinkage, validation acceptance, ... (for reports).
        autoencoder: the `autoencoder` method's Keras network.
    """

    method: str
    threshold: float
    accept: float
    tta: str
    scaling: str
    layout: ViewLayout | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    facts: dict[str, Any] = field(default_factory=dict, compare=False)
    autoencoder: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """ood.json's content (arrays and networks live beside it)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "threshold": self.threshold,
            "accept": self.accept,
            "tta": self.tta,
            "scaling": self.scaling,
            "layout": asdict(self.layout) if self.layout else None,
            "score": "higher is less familiar; in_domain = ood_score <= threshold",
            **self.facts,
        }


def _layout(stored: dict[str, Any] | None) -> ViewLayout | None:
    """A stored layout (JSON lists back to tuples; no `taps` in detectors fitted before them)."""
    if not stored:
        return None
    return ViewLayout(**{**stored, "taps": tuple(stored.get("taps", ()))})


def ood_dir(run_path: str | Path) -> Path:
    return Path(run_path) / OOD_DIR


def has_detector(run_path: str | Path) -> bool:
    return (ood_dir(run_path) / OOD_FILE).is_file()


def save_detector(run_path: str | Path, detector: Detector) -> Path:
    """Write `detector` to `RUN/ood/`, replacing any earlier one as a whole (atomic rename)."""
    target = ood_dir(run_path)
    staging = Path(tempfile.mkdtemp(prefix=".ood.tmp-", dir=Path(run_path)))
    try:
        (staging / OOD_FILE).write_text(json.dumps(detector.to_json(), indent=2) + "\n")
        if detector.arrays:
            np.savez(staging / ARRAYS_FILE, **detector.arrays)
        if detector.autoencoder is not None:
            detector.autoencoder.save(staging / AUTOENCODER_FILE)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / OOD_FILE


def load_detector(run_path: str | Path) -> Detector | None:
    """The run's detector, or None when it has none.

    Raises:
        UserError: the files are there but unreadable.
    """
    folder = ood_dir(run_path)
    if not (folder / OOD_FILE).is_file():
        return None
    try:
        stored = json.loads((folder / OOD_FILE).read_text())
        arrays = {}
        if (folder / ARRAYS_FILE).is_file():
            with np.load(folder / ARRAYS_FILE) as loaded:
                arrays = {name: loaded[name] for name in loaded.files}
        autoencoder = None
        if stored["method"] == "autoencoder":
            import keras

            autoencoder = keras.models.load_model(folder / AUTOENCODER_FILE, compile=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder}: cannot read the out-of-domain detector ({exc}); refit it with "
            f"`tfpipeline ood fit {run_path}`"
        ) from exc
    known = {"schema_version", "method", "threshold", "accept", "tta", "scaling", "layout", "score"}
    return Detector(
        method=stored["method"],
        threshold=float(stored["threshold"]),
        accept=float(stored["accept"]),
        tta=stored.get("tta", "none"),
        scaling=stored.get("scaling", "unit"),
        layout=_layout(stored.get("layout")),
        arrays=arrays,
        facts={k: v for k, v in stored.items() if k not in known},
        autoencoder=autoencoder,
    )
