"""What every backbone family shares: the pixel normalisation of its ImageNet weights, the atrous schedule that
turns strides past the output stride into dilation, batch norm as the `keras.applications` twins make it."""

from typing import Any

import keras
from keras import layers, ops

from kseg.errors import ArgumentError
from kseg.models.blocks import BN_MOMENTUM, BatchNormalization

# Pixel normalisation of the ImageNet weights, per RGB channel in [0, 255] units: (x - mean) / std.
TF_STYLE: dict[str, Any] = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}  # to [-1, 1]
CAFFE_STYLE: dict[str, Any] = {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "bgr": True}
TORCH_STYLE: dict[str, Any] = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}

class AtrousSchedule:
    """Tracks the current stride; once the output stride is reached, further strides become dilation.

    `strides, rate = schedule(stride)` is called once per layer that would stride (or dilate): a
    stride that would exceed the output stride turns into stride 1 at the current rate, and every
    later layer gets the rate multiplied by that stride (Chen et al. 2017, section 3.1).
    """

    def __init__(self, output_stride=32):
        if output_stride not in (8, 16, 32):
            raise ArgumentError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
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


@keras.saving.register_keras_serializable(package="kseg")
class ReverseChannels(layers.Layer):
    """RGB -> BGR for Caffe-trained weights (one REVERSE_V2 op in LiteRT, int8 included)."""

    def call(self, x):
        return ops.flip(x, axis=-1)


def batch_norm(name, epsilon=1e-3):
    """Batch norm as the `keras.applications` twin has it (epsilon 1e-3 unless the family says)."""
    return BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=name)


def make_divisible(value, divisor=8):
    """A channel count rounded to a multiple of `divisor`, never 10% below `value` (MobileNet's rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


def normalize(pixels, mean, std, bgr=False):
    """(pixels - mean) / std per RGB channel as layers (one MUL and one ADD in LiteRT), then RGB -> BGR if asked."""
    scale = [1 / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        scale, offset = scale[0], offset[0]
    x = rescale(pixels, scale, offset)
    return ReverseChannels(name="rgb_to_bgr")(x) if bgr else x


def rescale(pixels, scale=None, offset=None):
    """pixels * scale + offset (each None, a number or one per RGB channel; None: 1 and 0) as one Rescaling layer
    named as `normalize`'s: a keras-hub ImageConverter's `scale` and `offset`
    (keras_hub/src/layers/preprocessing/image_converter.py) inside the graph."""
    scale, offset = 1.0 if scale is None else scale, 0.0 if offset is None else offset
    return layers.Rescaling(scale, offset, name="normalize")(pixels)
