"""`fast_resnet`: a small-image network built for short training runs from scratch.

The design follows published fast-CIFAR work (Keller Jordan's airbench, David Page's ResNet
speed runs), each ingredient measured by our own ablation (benchmarks/README.md):

- **whitening stem**: a 2x2 convolution whose filters are the eigenvectors of the training
  images' 2x2 patch covariance, scaled by 1/sqrt(eigenvalue) (so its output is decorrelated,
  unit-variance), in +/- pairs, followed by the activation. Its kernel is computed from the data
  (:func:`init_whitening`) and frozen; its bias trains. `--stem plain` makes it an ordinary
  trainable convolution instead, and `--stem srm|residual` puts a fixed high-pass filter bank
  (:mod:`~tfpipeline.models.stems`) before that convolution, for local-artefact detection.
- three **groups** of conv -> max-pool -> BatchNorm -> act -> conv -> BatchNorm -> act (widths
  `--filters`, default 64/256/256), BatchNorm without scale (the next conv absorbs it) and with a
  fast-moving average (momentum 0.4: short runs need current statistics);
- **identity init** (`--init identity`): each 3x3 conv starts as an identity map on its first
  input channels (a dirac kernel), the rest drawn small, so the untrained network passes the
  whitened image through and training starts from a useful signal;
- a **scaled linear head**: global max-pool, a bias-free dense layer whose logits are multiplied
  by 1/9 (`--head-scale`), which keeps the early softmax soft.

For real-vs-fake faces, `--region-crops SIZE` runs the network on four SIZE-pixel crops of each
image (eyes, nose, mouth) and scores the image by their mean (:mod:`~tfpipeline.models.region_crops`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from tfpipeline.config import ModelConfig
from tfpipeline.errors import UserError
from tfpipeline.models.aux import REGION_OUTPUT, AuxRegionModel
from tfpipeline.models.common import InputShape, check_inputs, choose, output_units, widths
from tfpipeline.models.region_crops import (
    RegionCropModel,
    RegionCrops,
    region_crop_layer,
    region_features,
    region_outputs,
)
from tfpipeline.models.stems import high_pass

DEFAULT_WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # added to eigenvalues (relative to the mean patch variance) before 1/sqrt
DEFAULT_BN_MOMENTUM = 0.4
DEFAULT_HEAD_SCALE = 1.0 / 9.0
MIN_SIDE = 16
PATCH_CHUNK = 1_000_000
FAST_RESNET_SEARCH = {
    "lr": {"min": 0.05, "max": 1.0, "sampling": "log"},
    "weight_decay": {"min": 1e-3, "max": 3e-2, "sampling": "log"},
    "label_smoothing": [0.0, 0.1, 0.2],
    "batch_size": [256, 512],
    "flip": [True],
}


def small_uniform(seed: int | None = None) -> keras.initializers.Initializer:
    """Uniform in +/- 1/sqrt(fan_in) (PyTorch's conv default). Under BatchNorm a smaller weight
    norm means a larger effective step, which short runs need."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=seed)


@keras.saving.register_keras_serializable(package="tfpipeline")
class PartialIdentity(keras.initializers.Initializer):
    """Conv kernel [kh, kw, in, out]: output channel i < min(in, out) is the identity on input
    channel i (a dirac at the kernel centre); the other output channels are `small_uniform`."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kernel = keras.ops.convert_to_numpy(small_uniform(self.seed)(shape, dtype="float32"))
        kh, kw, channels_in, channels_out = shape
        n = min(channels_in, channels_out)
        kernel[:, :, :, :n] = 0.0
        kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="tfpipeline")
class WhiteningConv(layers.Conv2D):
    """A convolution whose kernel is set from data and never trained (its bias trains).

    The kernel is made non-trainable in `build`, so the freeze survives saving and loading.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel.trainable = False


def build_fast_resnet(config: ModelConfig, input_shape: InputShape, num_classes: int) -> keras.Model:
    """The network described in the module docstring.

    Args:
        config: `filters` (3 group widths), `activation` (gelu/relu), `stem` (whiten/plain),
            `init` (identity/default), `bn_momentum` and `head_scale` apply.
        input_shape: (height, width, channels); any size from 16x16 (global pooling at the end).
        num_classes: 2 for a sigmoid head, more for softmax.

    Returns:
        The uncompiled model, expecting pixels in [0, 1]. With `stem=whiten` its first layer
        must be initialised from training images (:func:`init_whitening`) before training.
    """
    name = "fast_resnet"
    height, width, channels = check_inputs(name, input_shape, MIN_SIDE)
    group_widths = widths(name, "filters", config.filters, DEFAULT_WIDTHS, exact=True)
    activation = choose(name, "activation", config.activation, ("gelu", "relu"), "gelu")
    stem = choose(name, "stem", config.stem, ("whiten", "plain", "srm", "residual"), "whiten")
    identity = choose(name, "init", config.init, ("identity", "default"), "identity") == "identity"
    momentum = config.bn_momentum or DEFAULT_BN_MOMENTUM
    scale = config.head_scale or DEFAULT_HEAD_SCALE
    units, head_activation = output_units(num_classes)

    inputs = keras.Input(shape=(height, width, channels), name="image")
    image = inputs
    if config.region_crops:  # one shared network over four region crops (models.region_crops)
        check_region_crops(config, height, width, units)
        image = RegionCrops(config.region_crops, name="region_crops")(inputs)
    stem_width = 2 * channels * WHITEN_KERNEL**2
    if stem == "whiten":
        x = WhiteningConv(stem_width, WHITEN_KERNEL, padding="valid", name="whiten")(image)
    else:  # a trainable first conv, over the image or over a fixed high-pass residue of it
        x = image if stem == "plain" else high_pass(stem, image)
        x = layers.Conv2D(stem_width, WHITEN_KERNEL, padding="valid", name="stem")(x)
    x = layers.Activation(activation, name="stem_act")(x)
    for g, group_width in enumerate(group_widths, start=1):
        for c in (1, 2):
            x = layers.Conv2D(
                group_width,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer=PartialIdentity() if identity else small_uniform(),
                name=f"group{g}_conv{c}",
            )(x)
            if c == 1:
                x = layers.MaxPooling2D(2, name=f"group{g}_pool")(x)
            x = layers.BatchNormalization(momentum=momentum, scale=False, name=f"group{g}_bn{c}")(x)
            x = layers.Activation(activation, name=f"group{g}_act{c}")(x)
    features = layers.GlobalMaxPooling2D(name="pool")(x)
    if config.region_crops:
        features = region_features(features)
    x = layers.Dense(units, use_bias=False, kernel_initializer=small_uniform(), name="logits")(features)
    x = layers.Rescaling(scale, name="head_scale")(x)
    if config.region_crops:
        patch_probs = layers.Activation(head_activation, dtype="float32", name="region_output")(x)
        output, regions = region_outputs(patch_probs)
        return RegionCropModel(keras.Model(inputs, [output, regions], name=name), name=name)
    outputs = layers.Activation(head_activation, dtype="float32", name="output")(x)
    if not config.aux_regions:
        return keras.Model(inputs, outputs, name=name)
    regions = layers.Dense(4, activation="sigmoid", dtype="float32", name=REGION_OUTPUT)(features)
    return AuxRegionModel(keras.Model(inputs, [outputs, regions], name=name), config.aux_regions, name=name)


def check_region_crops(config: ModelConfig, height: int, width: int, units: int) -> None:
    """UserError unless `--region-crops` can work here: a two-class task, crops that fit the
    image and are large enough for the network, and no second region head."""
    size = config.region_crops
    if units != 1:
        raise UserError("--region-crops scores a real/fake (two-class) task; this one has more classes")
    if not MIN_SIDE <= size <= min(height, width):
        raise UserError(
            f"--region-crops {size} must be between {MIN_SIDE} and the image side ({height}x{width}); "
            f"e.g. --image-size 256 --region-crops 80"
        )
    if config.aux_regions:
        raise UserError("--region-crops already trains on each region's target; drop --aux-regions")


def whitening_weights(images: np.ndarray, kernel: int = WHITEN_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a patch-whitening convolution fitted to `images`.

    The filters are the eigenvectors of the covariance of all `kernel` x `kernel` patches,
    each divided by sqrt(its eigenvalue + eps), largest first, then the same filters negated
    (so a following ReLU/GELU keeps both signs). The bias subtracts the mean patch, so the
    output of the layer is zero-mean with identity covariance on the training images.

    Args:
        images: float array [N, H, W, C], as the model receives them.
        kernel: patch side.

    Returns:
        (kernel [kernel, kernel, C, 2 * C * kernel^2], bias [2 * C * kernel^2]), float32.
    """
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape[1:3]) < kernel:
        raise UserError(
            f"whitening needs images [N, H, W, C] of at least {kernel}x{kernel}, got {images.shape}"
        )
    _, h, w, c = images.shape
    dims = kernel * kernel * c
    # Accumulate the patch mean and second moment in chunks of about PATCH_CHUNK patches, so a
    # few thousand large images never need all their patches in memory at once.
    per_image = (h - kernel + 1) * (w - kernel + 1)
    step = max(1, PATCH_CHUNK // per_image)
    total, first, second = 0, np.zeros(dims), np.zeros((dims, dims))
    for start in range(0, len(images), step):
        chunk = images[start : start + step].astype(np.float64)
        # All patches as rows, in the (kh, kw, c) order of a Keras conv kernel.
        patches = np.stack(
            [
                chunk[:, i : h - kernel + 1 + i, j : w - kernel + 1 + j, :]
                for i in range(kernel)
                for j in range(kernel)
            ],
            axis=3,
        ).reshape(-1, dims)
        total += len(patches)
        first += patches.sum(axis=0)
        second += patches.T @ patches
    mean = first / total
    covariance = second / total - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    eps = WHITEN_EPS * float(np.mean(np.diag(covariance)))
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
    filters = np.concatenate([filters, -filters], axis=1)  # [kernel*kernel*C, 2*kernel*kernel*C]
    bias = -(mean @ filters)
    return filters.reshape(kernel, kernel, c, -1).astype(np.float32), bias.astype(np.float32)


def init_whitening(model: keras.Model, images: np.ndarray) -> None:
    """Set the `whiten` layer of `model` (if it has one) from training `images`."""
    network = model.network if isinstance(model, AuxRegionModel) else model
    try:
        layer = network.get_layer("whiten")
    except ValueError:
        return  # --stem plain: nothing to fit
    crops = region_crop_layer(network)
    if crops is not None:  # the stem sees the region crops, so whiten those
        images = np.asarray(crops(images, training=False))
    kernel, bias = whitening_weights(images, layer.kernel_size[0])
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
