"""Keras model zoo: deterministic, well-conditioned NHWC float32 models for testing the TF import path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from keras import layers

IMAGENET_CLASSES = 1000
INPUT_NAME = "x"

# BatchNormalization statistics of the stride-32 feature map (2x2 at 64x64 inputs)
# are calibrated on at least this many positions per image kind; with 16, the
# estimation errors compounded into EfficientNet activations ~100x too large.
_CALIBRATION_SAMPLES_AT_STRIDE_32 = 64
_MIN_CALIBRATION_BATCH = 2

# Scale of the BatchNormalization that ends each residual branch. With full-size
# branches a random ResNet is chaotic: every block multiplies perturbations by ~1.5,
# so float32 rounding alone moved ResNet-50's logits by 2e-4 of their std (vs float64),
# above the 1e-4 atol compiler tests use; at 0.2 it is 1e-5. Trained ResNets have
# small gammas there too.
_RESIDUAL_BRANCH_GAIN = 0.2


# --------------------------------------------------------------------------- weights


def _fan_in(layer: layers.Layer) -> int:
    """Number of input values that feed one output value of `layer`."""
    kernel_shape = tuple(layer.kernel.shape)
    if isinstance(layer, layers.DepthwiseConv2D):
        kernel_height, kernel_width = kernel_shape[:2]
        return kernel_height * kernel_width
    if isinstance(layer, layers.Conv2DTranspose):
        # Kernel is (kh, kw, out, in); a stride-s transpose spreads each input over
        # s*s output positions, so each output sees only 1/(s*s) of the kernel taps.
        kernel_height, kernel_width, _, in_channels = kernel_shape
        stride_area = layer.strides[0] * layer.strides[1]
        return max(1, kernel_height * kernel_width * in_channels // stride_area)
    return int(np.prod(kernel_shape[:-1]))


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _producers(model: keras.Model) -> dict[int, layers.Layer]:
    return {id(layer.output): layer for layer in _leaf_layers(model) if not isinstance(layer.output, (list, tuple))}


def _inputs_of(tensor, producers: dict[int, layers.Layer]) -> list:
    layer = producers.get(id(tensor))  # None for raw keras.ops applied to symbolic tensors
    if layer is None or isinstance(layer, layers.InputLayer):
        return []
    return keras.tree.flatten(layer.input)


def _depends_on(tensor, ancestor, producers: dict[int, layers.Layer]) -> bool:
    frontier, seen = [tensor], set()
    while frontier:
        current = frontier.pop()
        if current is ancestor:
            return True
        if id(current) not in seen:
            seen.add(id(current))
            frontier.extend(_inputs_of(current, producers))
    return False


def _residual_branch_ends(model: keras.Model) -> set[int]:
    """ids of the BatchNormalizations that end a residual branch: they feed an Add
    whose other operand is the shortcut the branch itself was computed from."""
    producers = _producers(model)
    ends = set()
    for add in (layer for layer in _leaf_layers(model) if isinstance(layer, layers.Add)):
        operands = keras.tree.flatten(add.input)
        for branch in operands:
            if not any(other is not branch and _depends_on(branch, other, producers) for other in operands):
                continue
            layer = producers.get(id(branch))
            while isinstance(layer, layers.Dropout):  # EfficientNet's drop-connect sits after the BN
                layer = producers.get(id(layer.input))
            if isinstance(layer, layers.BatchNormalization):
                ends.add(id(layer))
    return ends


def _draw_parameters(model: keras.Model, rng: np.random.Generator) -> None:
    """Overwrites every trainable weight from `rng`.

    Keras' own initializers are not used: they draw from the global seed (so they
    would need a process-wide `set_random_seed`), and their Glorot fan for depthwise
    kernels counts all channels, which makes MobileNet's signal vanish.
    """
    residual_branch_ends = _residual_branch_ends(model)
    for layer in _leaf_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            gain = _RESIDUAL_BRANCH_GAIN if id(layer) in residual_branch_ends else 1.0
            if layer.gamma is not None:
                layer.gamma.assign(gain * rng.uniform(0.5, 1.5, channels).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(gain * rng.normal(0.0, 0.1, channels).astype(np.float32))
        elif getattr(layer, "kernel", None) is not None:
            he_std = np.sqrt(2.0 / _fan_in(layer))
            layer.kernel.assign(rng.normal(0.0, he_std, layer.kernel.shape).astype(np.float32))
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))
        elif layer.trainable_weights:
            raise TypeError(f"no initialization rule for layer {layer.name!r} ({type(layer).__name__})")


def random_images(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """NHWC float32 images in [0, 1]: a sum of random block mosaics, one per power-of-two
    block size from single pixels to the whole image, so there is structure at every scale.

    Unlike i.i.d. noise, whose deep features average out to nearly the same vector for
    every image, these make a classifier's logits depend strongly on the image.
    """
    batch, height, width, channels = shape
    images = np.zeros(shape, dtype=np.float64)
    cell = 1
    while cell < 2 * max(height, width):
        grid = rng.random((batch, -(-height // cell), -(-width // cell), channels))
        images += grid.repeat(cell, axis=1).repeat(cell, axis=2)[:, :height, :width]
        cell *= 2
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    return ((images - low) / (high - low)).astype(np.float32)


def _calibration_images(input_shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    height, width = input_shape[:2]
    positions_per_image = max(1, (height // 32) * (width // 32))
    batch = max(_MIN_CALIBRATION_BATCH, -(-_CALIBRATION_SAMPLES_AT_STRIDE_32 // positions_per_image))
    # Both kinds, so that neither drives activations out of range: calibrated on mosaics
    # alone, i.i.d. noise (far more fine detail) gave logits up to ~100x larger, and
    # calibrated on noise alone, a flat grey image gave them hundreds of times larger.
    mosaics = random_images((batch, *input_shape), rng)
    noise = rng.random((batch, *input_shape), dtype=np.float32)
    return np.concatenate([mosaics, noise])


def _calibrate_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    """Sets each BatchNormalization's moving statistics to the statistics its input
    actually has on a synthetic batch, as training would.

    Drawn moving statistics (mean ~ N(0, 0.1), var ~ U(0.5, 1.5)) normalize nothing:
    with fan-in scaled kernels, ResNet-50's logits reached ~2e3 and DeepLab's ~5e4;
    with Keras' default kernels, the input signal drowned under the per-channel
    offsets instead (MobileNetV2's logits changed by 2e-7 of their std between two
    different images). Calibrated statistics are still far from (0, 1) and differ per
    channel, so BN folding is exercised for real.
    """
    batchnorms = [layer for layer in _leaf_layers(model) if isinstance(layer, layers.BatchNormalization)]
    dropouts = [layer for layer in _leaf_layers(model) if isinstance(layer, layers.Dropout)]
    saved_momenta = [layer.momentum for layer in batchnorms]
    saved_rates = [layer.rate for layer in dropouts]
    try:
        for layer in batchnorms:
            layer.momentum = 0.0  # moving statistics := this batch's statistics
        for layer in dropouts:
            layer.rate = 0.0  # training-mode dropout would make calibration random
        model(_calibration_images(tuple(model.input_shape[1:]), rng), training=True)
    finally:
        for layer, momentum in zip(batchnorms, saved_momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, saved_rates):
            layer.rate = rate


def _make_deterministic(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    _draw_parameters(model, rng)
    _calibrate_batchnorm(model, rng)
    return model


# --------------------------------------------------------------------------- models


def _image_input(input_shape: tuple[int, ...]) -> keras.KerasTensor:
    return keras.Input(shape=tuple(input_shape), name=INPUT_NAME)


def _imagenet_classifier(application: Callable[..., keras.Model], seed: int, input_shape) -> keras.Model:
    image = _image_input(input_shape)
    # Logits, not softmax: 1000 softmax probabilities are all ~1e-3 and hide errors.
    classifier = application(
        weights=None, input_tensor=image, classes=IMAGENET_CLASSES, classifier_activation=None
    )
    # Re-wrapped because applications declare their inputs as a list, which makes
    # Keras warn on every call with a plain tensor.
    return _make_deterministic(keras.Model(image, classifier.output, name=classifier.name), seed)


def resnet50(*, seed: int = 0, input_shape=(224, 224, 3)) -> keras.Model:
    return _imagenet_classifier(keras.applications.ResNet50, seed, input_shape)


def mobilenet_v2(*, seed: int = 0, input_shape=(224, 224, 3)) -> keras.Model:
    return _imagenet_classifier(keras.applications.MobileNetV2, seed, input_shape)


def efficientnet_b0(*, seed: int = 0, input_shape=(224, 224, 3)) -> keras.Model:
    return _imagenet_classifier(keras.applications.EfficientNetB0, seed, input_shape)


def _conv_bn_relu(x, filters: int, name: str, *, kernel_size: int = 3, dilation_rate: int = 1, use_bias: bool = False):
    x = layers.Conv2D(
        filters,
        kernel_size,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=use_bias,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _bilinear_resize_to(x, height: int, width: int, name: str):
    return layers.UpSampling2D(
        size=(height // x.shape[1], width // x.shape[2]), interpolation="bilinear", name=name
    )(x)


def _dilated_spatial_pyramid_pooling(features):
    height, width = features.shape[1:3]
    pooled = layers.AveragePooling2D(pool_size=(height, width), name="aspp_pool")(features)
    pooled = _conv_bn_relu(pooled, 256, "aspp_pool_proj", kernel_size=1, use_bias=True)
    branches = [
        _bilinear_resize_to(pooled, height, width, "aspp_pool_upsample"),
        _conv_bn_relu(features, 256, "aspp_rate1", kernel_size=1),
        _conv_bn_relu(features, 256, "aspp_rate6", dilation_rate=6),
        _conv_bn_relu(features, 256, "aspp_rate12", dilation_rate=12),
        _conv_bn_relu(features, 256, "aspp_rate18", dilation_rate=18),
    ]
    merged = layers.Concatenate(axis=-1, name="aspp_concat")(branches)
    return _conv_bn_relu(merged, 256, "aspp_out", kernel_size=1)


def deeplabv3plus(*, seed: int = 0, input_shape=(512, 512, 3), num_classes: int = 20) -> keras.Model:
    """DeepLabV3+ on ResNet-50 as in keras.io/examples/vision/deeplabv3_plus."""
    height, width = input_shape[:2]
    if height % 16 or width % 16:
        raise ValueError(f"deeplabv3plus needs height and width divisible by 16, got {input_shape}")
    image = _image_input(input_shape)
    # The example feeds 0..255 pixels to caffe-style preprocessing; the zoo feeds
    # [0, 1], which would leave only a constant mean offset after preprocessing.
    pixels = layers.Rescaling(255.0, name="to_pixel_range")(image)
    backbone = keras.applications.ResNet50(
        weights=None,
        include_top=False,
        input_tensor=keras.applications.resnet50.preprocess_input(pixels),
    )
    encoder = _dilated_spatial_pyramid_pooling(backbone.get_layer("conv4_block6_2_relu").output)
    encoder = _bilinear_resize_to(encoder, height // 4, width // 4, "decoder_upsample_encoder")
    low_level = _conv_bn_relu(backbone.get_layer("conv2_block3_2_relu").output, 48, "decoder_low_level", kernel_size=1)
    x = layers.Concatenate(axis=-1, name="decoder_concat")([encoder, low_level])
    x = _conv_bn_relu(x, 256, "decoder_block1")
    x = _conv_bn_relu(x, 256, "decoder_block2")
    x = _bilinear_resize_to(x, height, width, "decoder_upsample_output")
    logits = layers.Conv2D(num_classes, 1, padding="same", name="logits")(x)
    return _make_deterministic(keras.Model(image, logits, name="deeplabv3plus"), seed)


def unet(
    *, seed: int = 0, input_shape=(256, 256, 3), num_classes: int = 2, base_filters: int = 16, depth: int = 4
) -> keras.Model:
    """Classic UNet (Ronneberger et al.), narrowed to `base_filters` at the top level."""
    if input_shape[0] % 2**depth or input_shape[1] % 2**depth:
        raise ValueError(f"unet of depth {depth} needs height and width divisible by {2**depth}, got {input_shape}")

    def double_conv(x, filters, name):
        return _conv_bn_relu(_conv_bn_relu(x, filters, f"{name}_a"), filters, f"{name}_b")

    image = _image_input(input_shape)
    x = image
    skips = []
    for level in range(depth):
        x = double_conv(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = double_conv(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"up{level}_upconv")(x)
        x = layers.Concatenate(axis=-1, name=f"up{level}_concat")([skips[level], x])
        x = double_conv(x, base_filters * 2**level, f"up{level}")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    return _make_deterministic(keras.Model(image, logits, name="unet"), seed)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class KerasZooModel:
    name: str
    build: Callable[..., keras.Model]  # build(seed=0, input_shape=(H, W, C))
    input_name: str
    input_shape: tuple[int, ...]  # with batch 1, NHWC
    small_input_shape: tuple[int, ...]

    def build_model(self, small: bool = False, seed: int = 0) -> keras.Model:
        shape = self.small_input_shape if small else self.input_shape
        return self.build(seed=seed, input_shape=shape[1:])

    def example_inputs(self, small: bool = False, seed: int = 0) -> np.ndarray:
        shape = self.small_input_shape if small else self.input_shape
        return random_images(shape, np.random.default_rng(seed))


KERAS_ZOO: dict[str, KerasZooModel] = {
    zoo_model.name: zoo_model
    for zoo_model in (
        KerasZooModel("resnet50", resnet50, INPUT_NAME, (1, 224, 224, 3), (1, 64, 64, 3)),
        KerasZooModel("mobilenet_v2", mobilenet_v2, INPUT_NAME, (1, 224, 224, 3), (1, 64, 64, 3)),
        KerasZooModel("efficientnet_b0", efficientnet_b0, INPUT_NAME, (1, 224, 224, 3), (1, 64, 64, 3)),
        KerasZooModel("deeplabv3plus", deeplabv3plus, INPUT_NAME, (1, 512, 512, 3), (1, 128, 128, 3)),
        KerasZooModel("unet", unet, INPUT_NAME, (1, 256, 256, 3), (1, 64, 64, 3)),
    )
}


def frozen_graph_def(model: keras.Model, batch_size: int = 1):
    """The model's inference graph, with static shapes, as a TF GraphDef whose weights are Const nodes."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    signature = tf.TensorSpec((batch_size, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature)
    return convert_variables_to_constants_v2(concrete).graph.as_graph_def()
