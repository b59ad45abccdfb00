"""Backbone registry: feature extractors that return feature maps keyed by stride.

Each backbone is written here with the layer names of its `keras.applications` twin, so ImageNet
weights transfer by name, also into the dilated variants (dilation does not change kernel shapes).
Output stride 8/16 is reached the DeepLab way: strides beyond the output stride become dilation.
Every feature map at stride s is ceil(input / s) pixels on each side, for any input size.

    pixels = kseg.models.blocks.pixel_input((None, None, 3))
    features = kseg.models.backbones.build("mobilenetv2", pixels, output_stride=16)
    features[4], features[16]  # stride-4 and stride-16 feature maps
"""

import dataclasses
import inspect
from collections.abc import Callable

import keras

from kseg.errors import KsegError, first_line
from kseg.models.backbones.common import (
    CAFFE_STYLE,
    TF_STYLE,
    TORCH_STYLE,
    AtrousSchedule,
    ReverseChannels,
    normalize,
)
from kseg.models.backbones.mobilenet import mobilenetv2, mobilenetv3_large, mobilenetv3_small
from kseg.models.backbones.resnet import resnet50, resnet101
from kseg.models.backbones.vgg import VGG16_STAGES, vgg16, vgg16_bn
from kseg.models.backbones.xception import xception


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Plain data about a backbone: how to build it, how it wants its pixels, where its weights come from."""

    build: Callable  # build(x, schedule, **options) -> {stride: tensor}; x is already normalised
    keras_application: str | None  # name in keras.applications, for ImageNet weights (None: no twin)
    mean: tuple  # per RGB channel, in pixel units: the graph computes (x - mean) / std
    std: tuple
    bgr: bool = False  # the weights expect BGR channel order (Caffe-trained)
    options: tuple = ()  # extra keyword options the builder takes (e.g. "alpha")


BACKBONES = {
    "mobilenetv2": Backbone(mobilenetv2, "MobileNetV2", **TF_STYLE, options=("alpha",)),
    "mobilenetv3_large": Backbone(mobilenetv3_large, "MobileNetV3Large", **TF_STYLE, options=("alpha", "minimalistic")),
    "mobilenetv3_small": Backbone(mobilenetv3_small, "MobileNetV3Small", **TF_STYLE, options=("alpha", "minimalistic")),
    "resnet50": Backbone(resnet50, "ResNet50", **CAFFE_STYLE),
    "resnet101": Backbone(resnet101, "ResNet101", **CAFFE_STYLE),
    "vgg16": Backbone(vgg16, "VGG16", **CAFFE_STYLE, options=("width",)),
    "vgg16_bn": Backbone(vgg16_bn, None, **TORCH_STYLE, options=("width",)),
    "xception": Backbone(xception, "Xception", **TF_STYLE),
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
    features = spec.build(normalize(pixels, spec.mean, spec.std, spec.bgr), AtrousSchedule(output_stride), **options)
    if weights is not None:
        load_weights(name, keras.Model(pixels, features[max(features)]), weights, **options)
    return features


def load_weights(name, backbone_model, weights, **options):
    """Copies the weights of `keras.applications.<Backbone>(weights=...)` into `backbone_model` by layer name.

    Layers the twin leaves unnamed (Xception's shortcut convolutions) get automatic names that depend
    on what was built before; those pair with kseg's remaining layers of the same type, in graph order.
    """
    spec = get(name)
    if spec.keras_application is None:
        raise KsegError(f"backbone {name!r} has no ImageNet weights in keras.applications")
    application = getattr(keras.applications, spec.keras_application)
    accepted = inspect.signature(application).parameters  # kseg's own options (VGG's width) stay here
    try:
        reference = application(include_top=False, weights=weights, input_shape=(224, 224, 3),
                                **{key: value for key, value in options.items() if key in accepted})
    except Exception as error:  # download failures, wrong files: one line that says which
        raise KsegError(f"cannot load {spec.keras_application} weights from {weights!r}: "
                        f"{first_line(error)}") from error
    ours = [layer for layer in backbone_model.layers if layer.weights]
    theirs = [layer for layer in reference.layers if layer.weights]
    by_name = {layer.name: layer for layer in theirs}
    pairs = [(layer, by_name[layer.name]) for layer in ours if layer.name in by_name]
    left = [layer for layer in ours if layer.name not in by_name]
    our_names = {layer.name for layer in ours}
    spare = [layer for layer in theirs if layer.name not in our_names]
    for kind in dict.fromkeys(type(layer).__name__ for layer in left):  # kseg's BatchNormalization too
        mine = [layer for layer in left if type(layer).__name__ == kind]
        twins = [layer for layer in spare if type(layer).__name__ == kind]
        if len(mine) != len(twins):
            raise KsegError(f"backbone layer {mine[0].name!r} has no counterpart in {spec.keras_application}")
        pairs += zip(mine, twins)
    for layer, twin in pairs:
        try:
            layer.set_weights(twin.get_weights())
        except ValueError:
            raise KsegError(f"{spec.keras_application} weights do not fit backbone layer {layer.name!r} "
                            f"built with {options}; ImageNet weights need the default width") from None


__all__ = ["BACKBONES", "CAFFE_STYLE", "TF_STYLE", "TORCH_STYLE", "AtrousSchedule", "Backbone", "ReverseChannels",
           "VGG16_STAGES", "build", "get", "load_weights", "names", "normalize"]
