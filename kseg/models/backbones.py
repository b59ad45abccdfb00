"""Backbone registry: feature extractors that return feature maps keyed by stride.

Each backbone is written here with the layer names of its `keras.applications` twin, so ImageNet
weights transfer by name, also into the dilated variants (dilation does not change kernel shapes).
Output stride 8/16 is reached the DeepLab way: strides beyond the output stride become dilation.

    pixels = kseg.models.blocks.pixel_input((None, None, 3))
    features = kseg.models.backbones.build("mobilenetv2", pixels, output_stride=16)
    features[4], features[16]  # stride-4 and stride-16 feature maps
"""

import dataclasses
from typing import Callable

import keras
from keras import layers

from kseg.errors import KsegError
from kseg.models.blocks import BN_MOMENTUM


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Plain data about a backbone: how to build it and where its ImageNet weights come from."""

    build: Callable  # build(x, schedule, **options) -> {stride: tensor}; x is already normalised
    keras_application: str  # name in keras.applications, for ImageNet weights
    scale: float  # pixel normalisation in the graph: x * scale + offset
    offset: float
    options: tuple = ()  # extra keyword options the builder takes (e.g. "alpha")


class AtrousSchedule:
    """Tracks the current stride; once the output stride is reached, further strides become dilation.

    `strides, rate = schedule(stride)` is called once per layer that would stride (or dilate): a
    stride that would exceed the output stride turns into stride 1 at the current rate, and every
    later layer gets the rate multiplied by that stride (Chen et al. 2017, section 3.1).
    """

    def __init__(self, output_stride=32):
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        self.output_stride = output_stride
        self.stride = 1
        self.rate = 1

    def __call__(self, stride=1):
        if stride > 1 and self.stride * stride > self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.stride *= stride
        return stride, self.rate




def _make_divisible(value, divisor=8):
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


# (expansion, output channels, repeats, first stride) per stage, from Sandler et al. 2018, table 2.
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _inverted_residual(x, expansion, filters, stride, rate, block_id):
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    in_channels = x.shape[-1]
    inputs = x
    if expansion != 1:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    expanded = x
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding="same", use_bias=False, name=prefix + "depthwise"
    )(x)
    x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name=prefix + "project_BN")(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return expanded, x


def mobilenetv2(x, schedule, alpha=1.0):
    """MobileNetV2 (Sandler et al. 2018) with keras.applications layer names; `alpha` is the width multiplier.

    Features: the widest map at each stride (the expansion before each strided block), and the
    320-channel last block at the output stride (the 1280-channel head is not built).
    """
    features = {}
    strides, _ = schedule(2)
    x = layers.Conv2D(_make_divisible(32 * alpha), 3, strides=strides, padding="same", use_bias=False, name="Conv1")(x)
    x = layers.BatchNormalization(epsilon=1e-3, momentum=BN_MOMENTUM, name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    for expansion, channels, repeats, first_stride in _MOBILENETV2_STAGES:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            stride_before = schedule.stride
            strides, rate = schedule(stride)
            filters = _make_divisible(int(channels * alpha))
            expanded, x = _inverted_residual(x, expansion, filters, strides, rate, block_id)
            if strides > 1:
                features[stride_before] = expanded
            block_id += 1
    features[schedule.stride] = x
    return features


BACKBONES = {
    "mobilenetv2": Backbone(mobilenetv2, "MobileNetV2", scale=1 / 127.5, offset=-1.0, options=("alpha",)),
}


def names():
    return sorted(BACKBONES)


def get(name):
    try:
        return BACKBONES[name]
    except KeyError:
        raise KsegError(f"unknown backbone {name!r}; available: {', '.join(names())}") from None


def build(name, pixels, output_stride=32, weights=None, **options):
    """Normalises `pixels` ([0, 255] RGB) and returns the backbone's features as {stride: tensor}.

    `weights`: None, "imagenet" (downloaded once by Keras, then cached) or a path to a weights file
    of the matching `keras.applications` model (include_top=False).
    """
    spec = get(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise KsegError(f"backbone {name!r} does not take {sorted(unknown)}; it takes {list(spec.options)}")
    x = layers.Rescaling(spec.scale, spec.offset, name="normalize")(pixels)
    features = spec.build(x, AtrousSchedule(output_stride), **options)
    if weights is not None:
        load_weights(name, keras.Model(pixels, features[max(features)]), weights, **options)
    return features


def load_weights(name, backbone_model, weights, **options):
    """Copies the weights of `keras.applications.<Backbone>(weights=...)` into `backbone_model` by layer name."""
    spec = get(name)
    application = getattr(keras.applications, spec.keras_application)
    try:
        reference = application(include_top=False, weights=weights, input_shape=(224, 224, 3), **options)
    except Exception as error:  # download failures, wrong files: one line that says which
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KsegError(f"cannot load {spec.keras_application} weights from {weights!r}: {first_line}") from None
    by_name = {layer.name: layer for layer in reference.layers}
    for layer in backbone_model.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise KsegError(f"backbone layer {layer.name!r} has no counterpart in {spec.keras_application}")
        layer.set_weights(by_name[layer.name].get_weights())
