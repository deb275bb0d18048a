"""A classifier with its detector: model-scaled images -> (model output, OOD score), one call.

:class:`OODScorer` is what every consumer uses - training-time calibration, `predict` on a run,
`evaluate --ood-data` and the exported signatures - so an image gets the same `ood_score`
everywhere (TensorFlow ops only: eager, in `tf.function`, or traced into a SavedModel).

For the embedding and output-based detectors, the model's output and the detector's views come
from the same forward passes (the view model, under the detector's test-time augmentation). When
the caller asks for another TTA than the detector was calibrated with, the probabilities come
from a separately wrapped model (an extra forward pass) and the score keeps the calibrated views.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError
from tfpipeline.ood.store import Detector

log = logging.getLogger(__name__)


class OODScorer:
    """`model` scored by `detector`; see the module docstring.

    Args:
        model: the plain classifier (no TTA; `load_run_model`'s).
        config: its ModelConfig (the registry says where the embedding is).
        detector: the fitted detector.
        tta: the test-time augmentation of the returned model output (default: the detector's).

    Raises:
        UserError: the model's views no longer match the detector's (refit it).
    """

    def __init__(self, model: Any, config: ModelConfig, detector: Detector, tta: str | None = None):
        from tfpipeline.models.tta import with_tta
        from tfpipeline.ood.views import default_taps, view_model

        self.detector = detector
        self.tta = detector.tta if tta is None else tta
        self._views = None
        self._classifier = None
        if detector.method == "autoencoder":
            self._classifier = with_tta(model, self.tta)
        else:
            view, layout = view_model(model, config, taps=detector.layout.taps)
            if layout != detector.layout:
                raise UserError(
                    f"the out-of-domain detector was fitted on views {detector.layout} but the model "
                    f"gives {layout}; refit it with `tfpipeline ood fit RUN`"
                )
            if detector.method == "mahalanobis" and not layout.taps and default_taps(model, config):
                log.warning(
                    "this run's out-of-domain detector models only the %s embedding (it was fitted "
                    "before detectors tapped earlier feature maps), and such detectors accept most "
                    "photos that are not like the training images (fake_faces v3/v4: 94%% of CIFAR-10 "
                    "photos); refit it with `tfpipeline ood fit RUN`",
                    layout.embedding_layer,
                )
            self._views = with_tta(view, detector.tta)
            if self.tta != detector.tta:
                self._classifier = with_tta(model, self.tta)
        self._compiled = None

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def models(self) -> list[Any]:
        """The Keras models the scorer calls (for an ExportArchive to track)."""
        found = [m for m in (self._views, self._classifier, self.detector.autoencoder) if m is not None]
        return found

    def __call__(self, images: Any) -> tuple[Any, Any]:
        """Model-scaled images [N, H, W, C] -> (model output float32 [N, units], scores float32 [N])."""
        import tensorflow as tf

        from tfpipeline.ood.autoencoder import reconstruction_error
        from tfpipeline.ood.detectors import score_views

        detector = self.detector
        output = None
        if self._views is not None:
            views = tf.cast(self._views(images, training=False), tf.float32)
            output = views[:, : detector.layout.units]
            scores = score_views(detector.method, views, detector.layout, detector.arrays)
        else:
            side = int(detector.facts["autoencoder"]["side"])
            scores = reconstruction_error(detector.autoencoder, images, detector.scaling, side)
        if self._classifier is not None:
            output = tf.cast(self._classifier(images, training=False), tf.float32)
        return output, scores

    def in_domain(self, scores: Any) -> Any:
        """Accepted as in-domain: score <= threshold (numpy or tensor, elementwise)."""
        return scores <= self.detector.threshold

    def batch(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(model output [N, units], scores [N]) of one batch, as numpy, through a compiled graph."""
        import tensorflow as tf

        if self._compiled is None:
            self._compiled = tf.function(self.__call__, reduce_retracing=True)
        output, scores = self._compiled(images)
        return output.numpy(), scores.numpy()

    def predict(self, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        """(model outputs [N, units], scores [N]) over a dataset of image batches (or (images, labels))."""
        outputs, scores = [], []
        for batch in dataset:
            output, score = self.batch(batch[0] if isinstance(batch, (tuple, list)) else batch)
            outputs.append(output)
            scores.append(score)
        if not outputs:
            return np.zeros((0, 1), np.float32), np.zeros(0, np.float32)
        return np.concatenate(outputs), np.concatenate(scores)


def run_scorer(run_path: Any, model: Any, config: ModelConfig, tta: str | None = None) -> OODScorer | None:
    """The scorer of a run folder's detector, or None when the run has none (older runs)."""
    from tfpipeline.ood.store import load_detector

    detector = load_detector(run_path)
    return None if detector is None else OODScorer(model, config, detector, tta)
