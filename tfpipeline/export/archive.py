"""`tfpipeline export`: a run folder -> a versioned, self-describing model folder.

Layout (TF Serving's): `OUT/<name>/<version>/` holding the SavedModel (`saved_model.pb`,
`variables/`, `assets/metadata.json`) or `model.keras` / `model.tflite` / `model.onnx` plus
`metadata.json`,
and the model card `README.md`.

A run with an out-of-domain detector (`RUN/ood/`) exports it inside the SavedModel's graph
(`ood_score` and `in_domain` outputs); the keras, tflite and onnx formats leave it out, and
their metadata.json says so.

Writes are atomic: everything goes to a hidden temporary folder beside the target
(`OUT/<name>/.<version>.tmp-XXXX`, which TF Serving ignores as it is not a number) and is
renamed into place at the end; a failure or interruption removes the temporary folder, so the
target either does not exist or is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import ServingSpec
from tfpipeline.export.limits import ServingLimits
from tfpipeline.export.metadata import METADATA_FILE, build_metadata, write_metadata
from tfpipeline.export.model_card import render_model_card
from tfpipeline.export.signatures import write_saved_model

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "keras", "tflite", "onnx")
MODEL_CARD = "README.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it holds."""

    path: Path
    format: str
    name: str
    version: int
    metadata: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def existing_versions(folder: Path) -> list[int]:
    """Integer-named subfolders of `folder` (TF Serving's versions), sorted."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(folder: Path) -> int:
    versions = existing_versions(folder)
    return versions[-1] + 1 if versions else 1


def resolve_target(out: str | Path, name: str, version: int | None, force: bool) -> tuple[Path, int]:
    """`OUT/<name>/<version>`; refuses an existing version unless `force`."""
    if not _NAME.match(name):
        raise UserError(f"--name must be letters, digits, '_', '.' or '-' (got '{name}')")
    if version is not None and version < 1:
        raise UserError(f"--version must be a positive integer, got {version}")
    base = Path(out).expanduser() / name
    version = version if version is not None else next_version(base)
    target = base / str(version)
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it or --version for another")
    return target, version


def write_model_card(folder: Path, metadata: dict[str, Any]) -> Path:
    path = folder / MODEL_CARD
    path.write_text(render_model_card(metadata))
    return path


def write_keras(plain: Any, folder: Path, checkpoint: Path, trained_policy: str | None) -> None:
    """Copy the run's checkpoint as `model.keras` (it already is a complete .keras file); of a
    model trained in mixed precision (`trained_policy`, as run.json records it), save its
    float32 copy `plain` instead, which computes what evaluate reported
    (:mod:`tfpipeline.models.precision`)."""
    from tfpipeline.models.precision import MIXED_POLICIES

    if trained_policy in MIXED_POLICIES:
        plain.save(folder / "model.keras")
    else:
        shutil.copy2(checkpoint, folder / "model.keras")


def write_tflite(model: Any, spec: ServingSpec, folder: Path, config: Any) -> dict[str, Any]:
    from tfpipeline.export.tflite import convert_to_tflite, tflite_report

    flatbuffer = convert_to_tflite(model, spec)
    (folder / "model.tflite").write_bytes(flatbuffer)
    return tflite_report(flatbuffer, model, spec, config)


def write_onnx(model: Any, spec: ServingSpec, folder: Path, config: Any) -> dict[str, Any]:
    from tfpipeline.export.onnx_export import convert_to_onnx, onnx_report

    serialised = convert_to_onnx(model, spec)
    (folder / "model.onnx").write_bytes(serialised)
    return onnx_report(serialised, model, spec, config)


def commit(temporary: Path, target: Path, force: bool) -> None:
    """Rename the finished `temporary` folder to `target` (replacing it when `force`)."""
    if not target.exists():
        try:
            os.replace(temporary, target)
        except OSError as exc:  # created concurrently (non-empty) since the check
            raise UserError(f"{target}: cannot move the export into place ({exc})") from exc
        return
    if not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(temporary, target)
    except BaseException:
        os.replace(old / "previous", target)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_run(
    run: str | Path,
    *,
    out: str | Path = "exports",
    fmt: str = "saved_model",
    version: int | None = None,
    name: str | None = None,
    force: bool = False,
    tta: str | None = None,
    limits: ServingLimits | None = None,
    ood: bool = True,
) -> ExportResult:
    """Export a finished run's best checkpoint (see the module docstring).

    Args:
        run: the run folder.
        out: parent of the `<name>/<version>` folders.
        fmt: `saved_model` (default, for TF Serving), `keras`, `tflite` or `onnx` (needs tf2onnx).
        version: the version number; default one more than the highest existing version.
        name: the model name in the layout; default the run's model name.
        force: replace an existing version.
        tta: test-time augmentation built into the exported graph (default: the run's own), so
            served predictions equal `evaluate`'s.
        limits: what the served model refuses before decoding (default :class:`ServingLimits`):
            inside the SavedModel's graph, and recorded in metadata.json and the model card for
            every format (`tfpipeline predict` applies them to any export).
        ood: include the run's out-of-domain detector in a SavedModel (`ood_score` and
            `in_domain` outputs) when it has one; False exports the classifier alone.

    Raises:
        UserError: not a finished run, an unknown format, or the version exists without `force`.
    """
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.models.tta import with_tta
    from tfpipeline.ood.scorer import OODScorer
    from tfpipeline.ood.store import load_detector

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got '{fmt}'")
    context = open_run(run)
    name = name or context.config.model.name
    target, version = resolve_target(out, name, version, force)
    spec = ServingSpec.from_context(context, tta)
    limits = limits or ServingLimits()
    plain = load_run_model(context)
    model = with_tta(plain, spec.tta)  # every format predicts as evaluate did
    # The SavedModel carries the run's out-of-domain detector in its graph; other formats say so.
    detector = load_detector(context.run.path)
    scorer = None
    if detector is not None and ood and fmt == "saved_model":
        scorer = OODScorer(plain, context.config.model, detector, spec.tta)
    metadata = build_metadata(
        context, spec, name=name, version=version, fmt=fmt, limits=limits, ood=detector, with_ood=ood
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=target.parent))
    try:
        if fmt == "saved_model":
            # write_out wants a fresh folder: write into a child, then lift its contents up.
            model_dir = temporary / "model"
            write_saved_model(model, spec, str(model_dir), limits, scorer)
            for child in model_dir.iterdir():
                os.replace(child, temporary / child.name)
            model_dir.rmdir()
            meta_path = temporary / "assets" / METADATA_FILE
        elif fmt == "keras":
            trained_policy = (context.info.get("precision") or {}).get("policy")
            write_keras(plain, temporary, context.run.model_checkpoint(), trained_policy)
            meta_path = temporary / METADATA_FILE
        elif fmt == "tflite":
            metadata["tflite"] = write_tflite(model, spec, temporary, context.config)
            meta_path = temporary / METADATA_FILE
        else:
            metadata["onnx"] = write_onnx(model, spec, temporary, context.config)
            meta_path = temporary / METADATA_FILE
        write_metadata(meta_path, metadata)
        write_model_card(temporary, metadata)
        temporary.chmod(0o755)  # mkdtemp makes it private; a model server may run as another user
        commit(temporary, target, force)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExportResult(path=target, format=fmt, name=name, version=version, metadata=metadata)
