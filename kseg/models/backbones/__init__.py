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
import os
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
    rescale,
)
from kseg.models.backbones.mobilenet import mobilenetv2, mobilenetv3_large, mobilenetv3_small, reduced_tail_layers
from kseg.models.backbones.resnet import resnet34, resnet50, resnet101
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
    torchvision: bool = False  # the builder takes torchvision=True: torchvision's graph, for its weights
    smp: bool = False  # the builder takes smp=True: segmentation_models_pytorch's encoder, for its weights


_MOBILENET_V3_OPTIONS = ("alpha", "minimalistic", "reduced_tail")
BACKBONES = {
    "mobilenetv2": Backbone(mobilenetv2, "MobileNetV2", **TF_STYLE, options=("alpha",), torchvision=True, smp=True),
    "mobilenetv3_large": Backbone(mobilenetv3_large, "MobileNetV3Large", **TF_STYLE, options=_MOBILENET_V3_OPTIONS,
                                  torchvision=True),
    "mobilenetv3_small": Backbone(mobilenetv3_small, "MobileNetV3Small", **TF_STYLE, options=_MOBILENET_V3_OPTIONS,
                                  torchvision=True),
    # keras.applications has no ResNet-34: no ImageNet weights but torchvision's and SMP's (kseg.models.convert)
    "resnet34": Backbone(resnet34, None, **TORCH_STYLE, torchvision=True, smp=True),
    "resnet50": Backbone(resnet50, "ResNet50", **CAFFE_STYLE, torchvision=True, smp=True),
    "resnet101": Backbone(resnet101, "ResNet101", **CAFFE_STYLE, torchvision=True, smp=True),
    "vgg16": Backbone(vgg16, "VGG16", **CAFFE_STYLE, options=("width",)),
    "vgg16_bn": Backbone(vgg16_bn, None, **TORCH_STYLE, options=("width",)),
    "xception": Backbone(xception, "Xception", **TF_STYLE),
}


def names():
    return sorted(BACKBONES)


# The file names `keras.applications` caches ImageNet weights (include_top=False) under, by backbone and options
# (keras/src/applications/{mobilenet_v2,mobilenet_v3,resnet,vgg16,xception}.py, Keras 3.15); None: no such file.
_MOBILENET_V3 = "weights_mobilenet_v3_{}{}_224_{}_float_no_top_v2.h5"
_IMAGENET_FILES: dict[str, Callable[..., str | None]] = {
    "mobilenetv2": lambda alpha=1.0: f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5",
    # reduced_tail: the same file, the layers it reshapes left out (`load_weights`)
    "mobilenetv3_large": lambda alpha=1.0, minimalistic=False, reduced_tail=False: _MOBILENET_V3.format(
        "large", "_minimalistic" * bool(minimalistic), float(alpha)),
    "mobilenetv3_small": lambda alpha=1.0, minimalistic=False, reduced_tail=False: _MOBILENET_V3.format(
        "small", "_minimalistic" * bool(minimalistic), float(alpha)),
    "resnet50": lambda: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": lambda: "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": lambda width=1.0: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" if width == 1 else None,
    "xception": lambda: "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def keras_models_folder() -> str:
    """Where Keras caches downloaded weights: `$KERAS_HOME/models`, else `~/.keras/models`. Read at each call
    (Keras itself reads KERAS_HOME once, at import)."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "models")


def imagenet_file(name: str, **options) -> str | None:
    """The path at which Keras caches ImageNet weights for backbone `name` built with `options`, whether the file
    is there or not; None where `keras.applications` has no twin or no file name for those options. Reading it
    never downloads anything: pass the path as `backbone_weights` once `os.path.isfile` says it is there.

        kseg.models.backbones.imagenet_file("mobilenetv2", alpha=0.5)
        # '~/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5', expanded
    """
    namer = _IMAGENET_FILES.get(name) if get(name).keras_application else None
    try:
        file_name = namer(**options) if namer else None
    except TypeError:  # an option keras.applications does not name its files by (kseg's own)
        return None
    return os.path.join(keras_models_folder(), file_name) if file_name else None


def layer_names(name: str, **options) -> set[str]:
    """Names of the layers backbone `name` builds with `options` (the same in every model that uses it)."""
    pixels = keras.Input((None, None, 3))
    features = build(name, pixels, **options)
    return {layer.name for layer in keras.Model(pixels, features[max(features)]).layers}


def get(name):
    try:
        return BACKBONES[name]
    except KeyError:
        raise KsegError(f"unknown backbone {name!r}; available: {', '.join(names())}") from None


def build(name, pixels, output_stride=32, weights=None, torchvision=False, smp=False, **options):
    """Normalises `pixels` ([0, 255] RGB) and returns the backbone's features as {stride: tensor}.

    `weights`: None, "imagenet" (downloaded once by Keras, then cached) or a path to a weights file
    of the matching `keras.applications` model (include_top=False).
    `torchvision=True`: torchvision's graph of the backbone (where `BACKBONES` says it has one) after torchvision's
    ImageNet normalisation, for weights converted from torchvision (`kseg.models.convert`), not `weights`.
    `smp=True`: segmentation_models_pytorch's encoder of that name (where `BACKBONES` says it has one; SMP's own
    ResNets and MobileNetV2 are torchvision's, dilated its own way and with its own features) after the same
    normalisation (SMP's ImageNet preprocessing), for weights converted from SMP, not `weights`.
    """
    spec = get(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise KsegError(f"backbone {name!r} does not take {sorted(unknown)}; it takes {list(spec.options)}")
    if torchvision or smp:
        library, flag = ("segmentation_models_pytorch", "smp") if smp else ("torchvision", "torchvision")
        if not getattr(spec, flag):
            raise KsegError(f"backbone {name!r} has no {library} variant; these do: "
                            f"{', '.join(n for n in names() if getattr(BACKBONES[n], flag))}")
        if weights is not None:
            raise KsegError(f"a {library} backbone takes weights converted from {library}, not {weights!r}")
        variant = {"smp": True} if smp else {"torchvision": True}
        return spec.build(normalize(pixels, **TORCH_STYLE), AtrousSchedule(output_stride), **variant, **options)
    features = spec.build(normalize(pixels, spec.mean, spec.std, spec.bgr), AtrousSchedule(output_stride), **options)
    if weights is not None:
        load_weights(name, keras.Model(pixels, features[max(features)]), weights, **options)
    return features


def load_weights(name, backbone_model, weights, **options):
    """Copies the weights of `keras.applications.<Backbone>(weights=...)` into `backbone_model` by layer name.

    Layers the twin leaves unnamed (Xception's shortcut convolutions) get automatic names that depend
    on what was built before; those pair with kseg's remaining layers of the same type, in graph order.
    A MobileNetV3 with `reduced_tail` takes the weights of every layer whose shape the halving keeps; the others
    start from scratch.
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
            if options.get("reduced_tail") and layer.name.startswith(reduced_tail_layers(name)):
                continue  # the halved last stage: no ImageNet weights of its shape
            raise KsegError(f"{spec.keras_application} weights do not fit backbone layer {layer.name!r} "
                            f"built with {options}; ImageNet weights need the default width") from None


__all__ = ["BACKBONES", "CAFFE_STYLE", "TF_STYLE", "TORCH_STYLE", "AtrousSchedule", "Backbone", "ReverseChannels",
           "VGG16_STAGES", "build", "get", "imagenet_file", "keras_models_folder", "layer_names", "load_weights",
           "names", "normalize", "rescale"]
