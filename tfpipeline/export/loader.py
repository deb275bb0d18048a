"""Load an export folder back as a predictor (what `tfpipeline predict` calls for exports).

:func:`load_export` accepts a version folder (`exports/small_cnn/3`) or a model folder
(`exports/small_cnn`, meaning its highest version) of any export format. The returned object
fits the predictor interface of :mod:`tfpipeline.evaluation.predict` (`class_names`,
`rule`, `preprocess`, `__call__`) and also offers
:meth:`ExportedModel.predict_bytes` for encoded files and :meth:`ExportedModel.predict_pixels`.

An export's :class:`~tfpipeline.export.limits.ServingLimits` (metadata.json `limits`) hold
whatever the format: a SavedModel enforces them in its graph, and for the keras, tflite and onnx
formats the loader decodes with the same header guard and refuses the same batches.

A SavedModel exported from a run with an out-of-domain detector returns `ood_score` and
`in_domain` too (metadata.json `ood.in_graph`); :meth:`ExportedModel.predict_batch` reads them,
so `tfpipeline predict EXPORT` reports them as it does for the run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import ServingSpec
from tfpipeline.export.archive import existing_versions
from tfpipeline.export.limits import ServingLimits
from tfpipeline.export.metadata import read_metadata
from tfpipeline.export.signatures import BYTES_SIGNATURE, FLOAT_SIGNATURE

MODEL_FILES = {
    "saved_model": "saved_model.pb",
    "keras": "model.keras",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
}


def resolve_export_dir(path: str | Path) -> Path:
    """The version folder meant by `path` (itself, or the highest version inside it)."""
    path = Path(path)
    if _has_metadata(path):
        return path
    versions = existing_versions(path)
    if versions and _has_metadata(path / str(versions[-1])):
        return path / str(versions[-1])
    raise UserError(f"{path}: not a tfpipeline export (no metadata.json, no version folder with one)")


def _has_metadata(path: Path) -> bool:
    return (path / "assets" / "metadata.json").is_file() or (path / "metadata.json").is_file()


def is_export(path: str | Path) -> bool:
    """True for an export version folder or a folder of versions (for `register_loader`)."""
    try:
        resolve_export_dir(path)
    except UserError:
        return False
    return True


@dataclass
class ExportedModel:
    """An exported model plus its metadata; see the module docstring.

    Attributes:
        path: the version folder.
        metadata: its metadata.json.
        spec: the preprocessing and decision facts, rebuilt from the metadata.
        limits: what it refuses (metadata.json `limits`; the defaults for older exports).
    """

    path: Path
    metadata: dict[str, Any]
    spec: ServingSpec
    limits: ServingLimits = field(default_factory=ServingLimits)
    _model: Any = field(default=None, repr=False)
    _decode: Any = field(default=None, repr=False)

    # -- the predictor interface of tfpipeline.evaluation.predict
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def rule(self) -> DecisionRule:
        return self.spec.rule

    @property
    def format(self) -> str:
        return self.metadata["format"]

    @property
    def decode_check(self) -> tuple[int, tuple[int, int]]:
        return self.spec.channels, tuple(self.spec.image_size)

    @property
    def ood_threshold(self) -> float | None:
        """The in-graph detector's threshold; None when the export has no OOD outputs."""
        ood = self.metadata.get("ood") or {}
        return float(ood["threshold"]) if ood.get("in_graph") and self.format == "saved_model" else None

    def preprocess(self, contents):
        """One file's bytes -> one model input (TF ops; runs inside tf.data).

        A SavedModel decodes (and applies its limits) inside its serving signature, so the bytes
        pass through; the other formats get the training pipeline's uint8 pixels, decoded behind
        the export's limits.
        """
        if self.format == "saved_model":
            return contents
        from tfpipeline.export.signatures import bytes_to_pixels

        return bytes_to_pixels(contents, "image file", self.spec, self.limits)

    def __call__(self, batch) -> np.ndarray:
        """A batch of `preprocess` outputs -> (N, K) probabilities in class order.

        Raises:
            UserError: the batch holds more than the export's `max_batch` images.
        """
        return self.predict_batch(batch)[0]

    def predict_batch(self, batch) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch of `preprocess` outputs -> ((N, K) probabilities, (N,) OOD scores or None).

        Raises:
            UserError: the batch holds more than the export's `max_batch` images.
        """
        if len(batch) > self.limits.max_batch:
            raise UserError(
                f"a batch of {len(batch)} images is more than this export's max_batch "
                f"{self.limits.max_batch} ({self.path}); "
                f"predict with --batch-size {self.limits.max_batch} or less"
            )
        if self.format != "saved_model":
            return self.predict_pixels(batch), None
        out = self.serve_bytes(batch)
        return out["probabilities"].astype(np.float64), (
            out["ood_score"].astype(np.float64) if "ood_score" in out else None
        )

    # -- direct use
    def predict_bytes(self, contents: Sequence[bytes] | Any) -> np.ndarray:
        """Encoded image files -> (N, K) probabilities (any export format).

        Raises:
            tf.errors.InvalidArgumentError: the call breaks the export's limits (see
                :mod:`tfpipeline.export.signatures`), or an image cannot be decoded.
        """
        import tensorflow as tf

        from tfpipeline.export.signatures import decode_batch, error_reason

        if self.format == "saved_model":
            return self.serve_bytes(contents)["probabilities"].astype(np.float64)
        contents = tf.convert_to_tensor(contents, dtype=tf.string)
        if self._decode is None:  # the other formats: traced once, a graph as in a SavedModel
            spec = tf.TensorSpec([None], tf.string)
            self._decode = tf.function(
                lambda c: decode_batch(c, self.spec, self.limits), input_signature=[spec]
            )
        try:  # the reason first, without TensorFlow's framing: `predict` shows its first line
            return self.predict_pixels(self._decode(contents))
        except tf.errors.InvalidArgumentError as exc:
            raise tf.errors.InvalidArgumentError(exc.node_def, exc.op, error_reason(exc.message)) from exc

    def serve_bytes(self, contents: Sequence[bytes] | Any) -> dict[str, np.ndarray]:
        """Every output of a SavedModel's `serving_default` signature (probabilities, class,
        score/decision, ood_score/in_domain, as the export has them) for encoded image files.

        Raises:
            tf.errors.InvalidArgumentError: as :meth:`predict_bytes`.
            UserError: the export is not a SavedModel.
        """
        import tensorflow as tf

        from tfpipeline.export.signatures import error_reason

        if self.format != "saved_model":
            raise UserError(f"{self.path}: a {self.format} export has no serving signatures")
        contents = tf.convert_to_tensor(contents, dtype=tf.string)
        try:
            out = self._model.signatures[BYTES_SIGNATURE](image_bytes=contents)
        except tf.errors.InvalidArgumentError as exc:
            raise tf.errors.InvalidArgumentError(exc.node_def, exc.op, error_reason(exc.message)) from exc
        return {name: value.numpy() for name, value in out.items()}

    def predict_pixels(self, pixels: Any) -> np.ndarray:
        """Pixels [N, H, W, C] 0..255 at the model's size -> (N, K) probabilities.

        Raises:
            tf.errors.InvalidArgumentError: more than the export's `max_batch` images.
        """
        import tensorflow as tf

        from tfpipeline.export.signatures import PIXELS_INPUT, checked_batch

        pixels = checked_batch(tf.cast(tf.convert_to_tensor(pixels), tf.float32), self.limits, PIXELS_INPUT)
        if self.format == "saved_model":
            out = self._model.signatures[FLOAT_SIGNATURE](images=pixels)
            return out["probabilities"].numpy().astype(np.float64)
        if self.format == "tflite":
            from tfpipeline.export.tflite import tflite_probabilities

            return tflite_probabilities(self._model, pixels.numpy())
        if self.format == "onnx":  # onnx's reference evaluator: correct but slow
            from tfpipeline.export.onnx_export import onnx_probabilities

            return onnx_probabilities(self._model, pixels.numpy())
        from tfpipeline.export.tflite import keras_probabilities

        return keras_probabilities(self._model, self.spec, pixels.numpy())

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices by the export's rule (thresholded positive score, or argmax)."""
        return self.rule.predict(probs)


def spec_from_metadata(meta: dict[str, Any]) -> ServingSpec:
    inp = meta["input"]
    class_names = tuple(meta["class_names"])
    return ServingSpec(
        class_names=class_names,
        rule=DecisionRule.from_json(meta.get("threshold"), class_names),
        image_size=(int(inp["image_size"][0]), int(inp["image_size"][1])),
        channels=int(inp["channels"]),
        resize=inp["resize"],
        interpolation=inp["interpolation"],
        scaling=inp["scaling"],
        tta=meta.get("tta", "none"),
    )


def load_export(path: str | Path, tta: str | None = None) -> ExportedModel:
    """Load the export at `path` (a version folder, or a model folder: its highest version).

    Args:
        tta: the test-time augmentation the caller expects; an export carries its own (in the
            graph, or applied on load for the keras format) and cannot change it.

    Raises:
        UserError: `path` is not an export, its model file is missing or unloadable, or `tta`
            differs from the export's.
    """
    folder = resolve_export_dir(path)
    meta = read_metadata(folder)
    exported_tta = meta.get("tta", "none")
    if tta is not None and tta != exported_tta:
        raise UserError(
            f"{folder}: exported with --tta {exported_tta}; re-export the run with --tta {tta} to change it"
        )
    fmt = meta.get("format")
    if fmt not in MODEL_FILES:
        raise UserError(f"{folder}: unknown export format '{fmt}' in metadata.json")
    model_file = folder / MODEL_FILES[fmt]
    if not model_file.is_file():
        raise UserError(f"{folder}: missing {model_file.name} for a '{fmt}' export")
    try:
        if fmt == "saved_model":
            import tensorflow as tf

            model = tf.saved_model.load(str(folder))
        elif fmt in ("tflite", "onnx"):
            model = model_file.read_bytes()
        else:
            import keras

            import tfpipeline.models  # noqa: F401  (registers custom layers for deserialisation)
            from tfpipeline.models.tta import with_tta

            model = with_tta(keras.models.load_model(model_file, compile=False), exported_tta)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_file}: cannot load the exported model ({exc})") from exc
    limits = ServingLimits.from_json(meta.get("limits"))
    return ExportedModel(folder, meta, spec_from_metadata(meta), limits, _model=model)
