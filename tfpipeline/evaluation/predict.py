"""`tfpipeline predict`: class predictions for image files, preprocessed exactly as in training.

A *predictor* is anything with `class_names`, a decision `rule`, a `preprocess`
(one encoded file's bytes -> one model input, TensorFlow ops only, so it runs inside tf.data)
and `__call__` (a batch of model inputs -> (N, K) class probabilities in class-name order).
A predictor with an out-of-domain detector also has `ood_threshold` (a number) and
`predict_batch` (a batch -> (probabilities, OOD scores)); :func:`predict_paths` then reports
`ood_score` and `in_domain` (score <= threshold) per image. Runs made before detection existed
have no detector and predict exactly as before.
:func:`load_predictor` picks a loader by looking at the folder; run folders are built in, and
an export stage can add its own folder format with :func:`register_loader`.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tfpipeline.data.sources import IMAGE_EXTENSIONS
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.evaluation.run_context import ServingSpec

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """The interface `predict_files` needs; see the module docstring.

    A predictor may also have `decode_check = (channels, (height, width))`, the decode settings
    the bad-file check should use (default 3 channels at 224x224), and the out-of-domain pair
    `ood_threshold` / `predict_batch` (see the module docstring).
    """

    class_names: tuple[str, ...]
    rule: DecisionRule

    def preprocess(self, contents: Any) -> Any: ...

    def __call__(self, batch: Any) -> np.ndarray: ...


@dataclass
class RunPredictor:
    """A run folder's best checkpoint with the run's own preprocessing and decision rule, and
    its out-of-domain scorer (:class:`~tfpipeline.ood.scorer.OODScorer`) when it has one."""

    model: Any
    spec: ServingSpec
    ood: Any = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def rule(self) -> DecisionRule:
        return self.spec.rule

    @property
    def decode_check(self) -> tuple[int, tuple[int, int]]:
        """(channels, size) the data stage's file check decodes with."""
        return self.spec.channels, tuple(self.spec.image_size)

    def preprocess(self, contents):
        """Encoded bytes -> float32 [H, W, C], the training pipeline's steps in its order."""
        from tfpipeline.data.decode import encoded_to_pixels, scale_pixels

        spec = self.spec
        pixels = encoded_to_pixels(contents, spec.channels, spec.image_size, spec.resize, spec.interpolation)
        return scale_pixels(pixels, spec.scaling)

    @property
    def ood_threshold(self) -> float | None:
        return None if self.ood is None else self.ood.threshold

    def __call__(self, batch) -> np.ndarray:
        return self.predict_batch(batch)[0]

    def predict_batch(self, batch) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, K) probabilities and the (N,) OOD scores (None without a detector)."""
        from tfpipeline.evaluation.run_report import class_probabilities

        scores = None
        if self.ood is not None:  # one pass gives the model's output and its OOD score
            raw, scores = self.ood.batch(batch)
        else:
            raw = self.model.predict_on_batch(batch)  # the TTA-wrapped model when the run uses TTA
        probs = class_probabilities(np.asarray(raw), len(self.class_names), self.rule.positive_index)
        return probs, scores


def load_run_predictor(path: Path, tta: str | None = None) -> RunPredictor:
    from tfpipeline.evaluation.run_context import load_run_model, open_run
    from tfpipeline.models.tta import with_tta
    from tfpipeline.ood.scorer import run_scorer

    context = open_run(path)
    spec = ServingSpec.from_context(context, tta)
    model = load_run_model(context)
    ood = run_scorer(context.run.path, model, context.config.model, spec.tta)
    return RunPredictor(model=with_tta(model, spec.tta), spec=spec, ood=ood)


# (matches(path), load(path, tta)) pairs, tried in order; the first match loads the predictor.
_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., Predictor]]] = [
    (lambda path: (path / "config.yaml").is_file(), load_run_predictor),
]


def register_loader(matches: Callable[[Path], bool], load: Callable[..., Predictor]) -> None:
    """Teach :func:`load_predictor` a new folder format (e.g. an exported model), tried first."""
    _LOADERS.insert(0, (matches, load))


def load_predictor(path: str | Path, tta: str | None = None) -> Predictor:
    """The predictor stored at `path` (a run folder, or any registered format).

    Args:
        tta: test-time augmentation, overriding the run's own (`none`, `flip`); exports carry
            theirs inside the graph and refuse a different one.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (expected a run folder or an export)")
    for matches, load in _LOADERS:
        if matches(path):
            return load(path, tta)
    raise UserError(f"{path}: neither a tfpipeline run folder (no config.yaml) nor an export")


# ---------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, plus images found recursively (sorted) in given folders.

    Raises:
        UserError: a path does not exist, or there is no image at all.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return unique


def bad_files(paths: Sequence[Path], predictor: Predictor) -> dict[Path, str]:
    """Files the training decoder cannot use, with the reason (the data stage's file check)."""
    from tfpipeline.data.check import check_files

    check = getattr(predictor, "decode_check", None)
    channels, size = check if check else (3, (224, 224))
    report = check_files([str(p) for p in paths], channels=channels, target_hw=size)
    reasons: dict[Path, str] = {}
    for problem in report.problems:
        if problem.fatal:
            reasons.setdefault(Path(problem.path), str(problem).split(": ", 1)[-1])
    return reasons


@dataclass(frozen=True)
class Predictions:
    """What :func:`predict_paths` found.

    Attributes:
        files: the files predicted, in input order.
        probs: (N, K) class probabilities.
        skipped: files skipped as bad.
        ood_scores: (N,) out-of-domain scores (higher: less like the training images); None when
            the predictor has no detector.
        in_domain: (N,) bool, `ood_scores <= ood_threshold`; None without a detector.
        ood_threshold: the detector's threshold.
    """

    files: list[Path]
    probs: np.ndarray
    skipped: list[Path]
    ood_scores: np.ndarray | None = None
    in_domain: np.ndarray | None = None
    ood_threshold: float | None = None


def predict_files(
    predictor: Predictor, paths: Sequence[Path], *, batch_size: int = 32, skip_bad: bool = False
) -> tuple[list[Path], np.ndarray, list[Path]]:
    """Class probabilities of image files through a tf.data pipeline.

    Returns:
        (files predicted, probabilities (N, K), files skipped as bad); :func:`predict_paths`
        also gives the out-of-domain scores.

    Raises:
        UserError: naming the first bad file (unless `skip_bad`), or when every file is bad.
    """
    found = predict_paths(predictor, paths, batch_size=batch_size, skip_bad=skip_bad)
    return found.files, found.probs, found.skipped


def predict_paths(
    predictor: Predictor, paths: Sequence[Path], *, batch_size: int = 32, skip_bad: bool = False
) -> Predictions:
    """Class probabilities, and out-of-domain scores when the predictor has a detector, of image
    files through a tf.data pipeline.

    Raises:
        UserError: naming the first bad file (unless `skip_bad`), or when every file is bad.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    bad = bad_files(paths, predictor)
    if bad and not skip_bad:
        listing = "\n".join(f"  {p}: {why}" for p, why in list(bad.items())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UserError(
            f"{len(bad)} bad image file(s), e.g. {next(iter(bad))}; fix or remove them, or pass --skip-bad:\n"
            f"{listing}{more}"
        )
    good = [p for p in paths if p not in bad]
    if bad:
        log.warning("--skip-bad: skipped %d bad file(s):\n%s", len(bad), "\n".join(f"  {p}" for p in bad))
    if not good:
        raise UserError("every input file is bad; nothing to predict")
    dataset = (
        tf.data.Dataset.from_tensor_slices([str(p) for p in good])
        .map(lambda p: predictor.preprocess(tf.io.read_file(p)), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    threshold = getattr(predictor, "ood_threshold", None)
    outputs, scores, done = [], [], 0
    try:
        for batch in dataset:
            if threshold is None:
                outputs.append(np.asarray(predictor(batch), dtype=np.float64))
            else:
                probs, score = predictor.predict_batch(batch)
                outputs.append(np.asarray(probs, dtype=np.float64))
                scores.append(np.asarray(score, dtype=np.float64).reshape(-1))
            done += len(outputs[-1])
    except tf.errors.OpError as exc:  # the check passed but decoding failed anyway
        culprit = good[min(done, len(good) - 1)]
        raise UserError(
            f"cannot read image {culprit} (or a file near it): {exc.message.splitlines()[0]}"
        ) from None
    ood = np.concatenate(scores) if threshold is not None else None
    return Predictions(
        files=good,
        probs=np.concatenate(outputs),
        skipped=[p for p in paths if p in bad],
        ood_scores=ood,
        in_domain=None if ood is None else ood <= threshold,
        ood_threshold=threshold,
    )


ID_FORMATS = ("auto", "int", "stem")


def submission_rows(
    paths: Sequence[Path],
    labels: np.ndarray,
    class_names: Sequence[str],
    label_format: str = "index",
    id_format: str = "auto",
    extra: Sequence[tuple[str, ...]] | None = None,
) -> list[tuple[str, ...]]:
    """Kaggle rows (ID, TARGET), sorted numerically when every ID is an integer.

    Args:
        label_format: TARGET as the class `index` or its `name`.
        id_format: `auto` writes integer IDs (`00042.jpg` -> `42`, the usual Kaggle format) when
            every file stem is an integer and the stems otherwise; `int` insists on integers;
            `stem` writes the stems as they are (`00042`).
        extra: more values per file (e.g. its OOD score and in-domain flag), appended to its row.

    Raises:
        UserError: two files would get the same ID, or `int` was asked for non-integer stems.
    """
    if label_format not in ("index", "name"):
        raise UserError(f"--label-format must be index or name, got '{label_format}'")
    if id_format not in ID_FORMATS:
        raise UserError(f"--id-format must be one of {', '.join(ID_FORMATS)}, got '{id_format}'")
    numeric = all(_is_int(p.stem) for p in paths)
    if id_format == "int" and not numeric:
        example = next(p for p in paths if not _is_int(p.stem))
        raise UserError(f"--id-format int: {example} has no integer file name")
    as_int = numeric and id_format != "stem"
    seen: dict[str, Path] = {}
    rows = []
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        identifier = str(int(path.stem)) if as_int else path.stem
        if identifier in seen:
            raise UserError(f"duplicate ID '{identifier}': {seen[identifier]} and {path}")
        seen[identifier] = path
        target = str(int(label)) if label_format == "index" else str(class_names[int(label)])
        rows.append((identifier, target, *(extra[i] if extra is not None else ())))
    if numeric:
        return sorted(rows, key=lambda row: int(row[0]))
    return sorted(rows, key=lambda row: row[0])


def write_submission(
    path: str | Path, rows: Sequence[tuple[str, ...]], extra_columns: Sequence[str] = ()
) -> Path:
    """Write `ID,TARGET` rows (plus `extra_columns`, e.g. OOD_SCORE,IN_DOMAIN, when asked)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "TARGET", *extra_columns])
        writer.writerows(rows)
    return path


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", text) is not None
