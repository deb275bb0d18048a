"""Transfer learning on a frozen ResNet50 backbone (functional API): `resnet50_head`."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError
from tfpipeline.models.common import (
    COMMON_SEARCH,
    DROPOUT_SEARCH,
    InputShape,
    check_inputs,
    dense_stack,
    output_layer,
    widths,
)

RESNET50_MIN_SIDE = 32  # keras.applications refuses smaller inputs without the top
RESNET50_HEAD_SEARCH = {
    "dense_1": [128, 256, 512],
    "dense_2": [32, 64, 128],
    **DROPOUT_SEARCH,
    "fine_tune_layers": [0, 10, 30],
    **COMMON_SEARCH,
}


@keras.saving.register_keras_serializable(package="tfpipeline")
class ResNet50Preprocess(layers.Layer):
    """Raw [0, 255] pixels -> ResNet50 input: grayscale tiled to RGB, then `preprocess_input`.

    Keeping the normalisation inside the model means the saved `.keras` file carries it (no
    train/serve skew), and a registered layer reloads without `custom_objects` or the
    safe-mode restrictions that a Lambda layer would hit.
    """

    def call(self, inputs):
        if inputs.shape[-1] == 1:  # ImageNet weights need 3 channels; grey is R = G = B
            inputs = keras.ops.repeat(inputs, 3, axis=-1)
        return keras.applications.resnet50.preprocess_input(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def _resnet50_backbone(weights: str, shape: InputShape) -> keras.Model:
    """ResNet50 without its top, initialised from `imagenet`, `none` or a local weights file."""
    choice = weights.lower()
    if choice == "imagenet":
        try:
            return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:
            # Offline, keras' get_file turns URLError/HTTPError into a bare Exception("URL fetch
            # failure ..."); a bad cached file gives OSError or a hash-check ValueError.
            text = str(exc)
            if not (isinstance(exc, OSError) or "URL fetch failure" in text or "corrupted" in text):
                raise
            raise UserError(
                f"could not download the ImageNet weights for resnet50_head ({text}); without internet "
                "use --weights none (random initialisation) or --weights PATH to a local "
                ".h5 / .weights.h5 file"
            ) from exc
    path = Path(weights).expanduser()
    if choice != "none":  # check the file before the (slow) backbone build
        if not path.is_file():
            raise UserError(f"--weights: file not found: {path} (use imagenet, none, or a .h5 file path)")
        if path.suffix not in (".h5", ".hdf5"):
            raise UserError(f"--weights: {path} is not a .h5 / .weights.h5 weights file")
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
    if choice != "none":
        try:
            backbone.load_weights(str(path))
        except (ValueError, OSError, KeyError) as exc:
            raise UserError(f"--weights: could not load {path} into the ResNet50 backbone: {exc}") from exc
    return backbone


def _set_fine_tuning(backbone: keras.Model, fine_tune_layers: int) -> None:
    """Freeze the backbone except its last `fine_tune_layers` layers; BatchNorm always frozen.

    Layers are counted over `backbone.layers` (activations, adds and the input count too), the
    usual Keras recipe; a count beyond the depth unfreezes everything. Frozen BatchNorm keeps
    its ImageNet statistics, which small fine-tuning batches would otherwise wreck.
    """
    backbone.trainable = fine_tune_layers > 0
    if fine_tune_layers == 0:
        return
    cutoff = max(len(backbone.layers) - fine_tune_layers, 0)
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= cutoff and not isinstance(layer, layers.BatchNormalization)


def build_resnet50_head(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """Frozen ResNet50 backbone + global average pooling + Dense 512/128/32 ReLU + output.

    The model takes raw [0, 255] pixels: grayscale is tiled to 3 channels, then ResNet50's own
    preprocessing runs inside the model. The backbone is called with `training=False` so its
    batch norm stays in inference mode even when layers are unfrozen for fine-tuning.

    Args:
        config: `weights` (`imagenet`, `none` or a `.h5` path), `fine_tune_layers`,
            `dense_units` (any number of widths), `dropout`, `dropout_rate` and `l2` apply;
            `filters`, `padding` and `batchnorm` do not.
        input_shape: (height, width, channels), sides >= 32, 1 or 3 channels.
        num_classes: 2 for a sigmoid head, more for softmax.

    Raises:
        UserError: ImageNet weights unavailable (offline), or a weights file missing/unloadable.
    """
    height, width, channels = check_inputs("resnet50_head", input_shape, RESNET50_MIN_SIDE)
    units = widths("resnet50_head", "dense-units", config.dense_units, (512, 128, 32), exact=False)
    head = output_layer(num_classes, config.l2)  # fail on a bad class count before the slow part
    backbone = _resnet50_backbone(config.weights, (height, width, 3))
    _set_fine_tuning(backbone, config.fine_tune_layers)

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = ResNet50Preprocess(name="resnet50_preprocess")(inputs)
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for layer in dense_stack(config, units, dropout_after_last=False):
        x = layer(x)
    return keras.Model(inputs, head(x), name="resnet50_head")


def is_pretrained(config: ModelConfig) -> bool:
    """ImageNet or a weights file, not `--weights none`."""
    return config.weights.lower() != "none"
