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
from keras import layers, ops

from kseg.errors import ArgumentError, KsegError, first_line
from kseg.models.blocks import BN_MOMENTUM, BatchNormalization, conv_bn_act

# Pixel normalisation of the ImageNet weights, per RGB channel in [0, 255] units: (x - mean) / std.
TF_STYLE = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}  # to [-1, 1]
CAFFE_STYLE = {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "bgr": True}
TORCH_STYLE = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Plain data about a backbone: how to build it, how it wants its pixels, where its weights come from."""

    build: Callable  # build(x, schedule, **options) -> {stride: tensor}; x is already normalised
    keras_application: str | None  # name in keras.applications, for ImageNet weights (None: no twin)
    mean: tuple  # per RGB channel, in pixel units: the graph computes (x - mean) / std
    std: tuple
    bgr: bool = False  # the weights expect BGR channel order (Caffe-trained)
    options: tuple = ()  # extra keyword options the builder takes (e.g. "alpha")


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


def _batch_norm(name, epsilon=1e-3):
    return BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=name)


def _make_divisible(value, divisor=8):
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


# VGG ----------------------------------------------------------------------------------------------

# (convolutions, filters) per block, from Simonyan & Zisserman 2014, table 1, configuration D.
VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def _vgg(x, schedule, conv, width):
    features = {}
    for block, (convs, filters) in enumerate(VGG16_STAGES, start=1):
        for i in range(1, convs + 1):
            x = conv(x, max(int(filters * width), 4), schedule.rate, f"block{block}_conv{i}")
        strides, _ = schedule(2)
        # Past the output stride the pool keeps its smoothing but not its stride (DeepLab-v1).
        size = 2 if strides > 1 else 3
        x = layers.MaxPooling2D(size, strides=strides, padding="same", name=f"block{block}_pool")(x)
        features[schedule.stride] = x
    return features


def vgg16(x, schedule, width=1.0):
    """VGG16 (Simonyan & Zisserman 2014) with keras.applications names; `width` multiplies the channels.

    Features: each block's pool (FCN's pool3, pool4 and pool5 at strides 8, 16 and 32).
    """

    def conv(x, filters, rate, name):
        return layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, activation="relu", name=name)(x)

    return _vgg(x, schedule, conv, width)


def vgg16_bn(x, schedule, width=1.0):
    """VGG16 with batch normalisation after every convolution (Conv -> BN -> ReLU); no ImageNet weights."""

    def conv(x, filters, rate, name):
        return conv_bn_act(x, filters, 3, dilation_rate=rate, name=name)

    return _vgg(x, schedule, conv, width)


# ResNet -------------------------------------------------------------------------------------------


def _bottleneck(x, filters, stride, rate, projection, name):
    # keras.applications' ResNet (v1) strides in the first 1x1 convolution, not in the 3x3 one.
    shortcut = x
    if projection:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _batch_norm(f"{name}_0_bn", 1.001e-5)(shortcut)
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _batch_norm(f"{name}_1_bn", 1.001e-5)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv")(x)
    x = _batch_norm(f"{name}_2_bn", 1.001e-5)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = _batch_norm(f"{name}_3_bn", 1.001e-5)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet(x, schedule, depths):
    features = {}
    # Explicit zero padding + "valid", as keras.applications: the same ceil(size / 2) as "same", but
    # centred, which the ImageNet weights were trained with.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=schedule(2)[0], name="conv1_conv")(x)
    x = _batch_norm("conv1_bn", 1.001e-5)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    features[schedule.stride] = x
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=schedule(2)[0], name="pool1_pool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), depths), start=2):
        for block in range(1, blocks + 1):
            strides, _ = schedule(2 if block == 1 and stage > 2 else 1)
            # The 3x3 convolution follows the (removed) stride, so it already takes the new rate.
            x = _bottleneck(x, filters, strides, schedule.rate, block == 1, f"conv{stage}_block{block}")
        features[schedule.stride] = x
    return features


def resnet50(x, schedule):
    """ResNet-50 (He et al. 2016) with keras.applications names. Features: conv1 and each stage's output."""
    return _resnet(x, schedule, (3, 4, 6, 3))


def resnet101(x, schedule):
    """ResNet-101 (He et al. 2016) with keras.applications names. Features: conv1 and each stage's output."""
    return _resnet(x, schedule, (3, 4, 23, 3))


# Xception -----------------------------------------------------------------------------------------


def _separable(x, filters, rate, name, activate_first=True):
    if activate_first:
        x = layers.Activation("relu", name=f"{name}_act")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same", dilation_rate=rate, use_bias=False, name=name)(x)
    return _batch_norm(f"{name}_bn")(x)


def _xception_down_block(x, block, filters, schedule, features):
    """Two separable convolutions and a strided max pool, plus a strided 1x1 projection shortcut."""
    rate, stride_before = schedule.rate, schedule.stride
    strides, _ = schedule(2)
    if strides > 1:
        features[stride_before] = x
    # Unnamed in keras.applications; `load_weights` pairs these with the twin's in graph order.
    residual = layers.Conv2D(
        filters[1], 1, strides=strides, padding="same", use_bias=False, name=f"block{block}_residual_conv")(x)
    residual = _batch_norm(f"block{block}_residual_bn")(residual)
    x = _separable(x, filters[0], rate, f"block{block}_sepconv1", activate_first=block != 2)
    x = _separable(x, filters[1], rate, f"block{block}_sepconv2")
    x = layers.MaxPooling2D(3, strides=strides, padding="same", name=f"block{block}_pool")(x)
    return layers.Add(name=f"block{block}_add")([x, residual])


def xception(x, schedule):
    """Xception (Chollet 2017) with keras.applications names.

    Features: each block output before a stride change, and block14_sepconv2_act at the output
    stride. Unlike keras.applications, the two stem convolutions pad "same" (not "valid"), so feature
    maps stay aligned with the image at ceil(input / stride).
    """
    features = {}
    x = layers.Conv2D(32, 3, strides=schedule(2)[0], padding="same", use_bias=False, name="block1_conv1")(x)
    x = _batch_norm("block1_conv1_bn")(x)
    x = layers.Activation("relu", name="block1_conv1_act")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="block1_conv2")(x)
    x = _batch_norm("block1_conv2_bn")(x)
    x = layers.Activation("relu", name="block1_conv2_act")(x)
    for block, filters in ((2, (128, 128)), (3, (256, 256)), (4, (728, 728))):
        x = _xception_down_block(x, block, filters, schedule, features)
    for block in range(5, 13):
        residual = x
        for i in (1, 2, 3):
            x = _separable(x, 728, schedule.rate, f"block{block}_sepconv{i}")
        x = layers.Add(name=f"block{block}_add")([x, residual])
    x = _xception_down_block(x, 13, (728, 1024), schedule, features)
    for i, filters in ((1, 1536), (2, 2048)):
        x = _separable(x, filters, schedule.rate, f"block14_sepconv{i}", activate_first=False)
        x = layers.Activation("relu", name=f"block14_sepconv{i}_act")(x)
    features[schedule.stride] = x
    return features


# MobileNetV2 --------------------------------------------------------------------------------------

# (expansion, output channels, repeats, first stride) per stage, from Sandler et al. 2018, table 2.
_MOBILENETV2_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _inverted_residual(x, expansion, filters, stride, rate, block_id):
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    in_channels = x.shape[-1]
    inputs = x
    if expansion != 1:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = _batch_norm(prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    expanded = x
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding="same", use_bias=False, name=prefix + "depthwise"
    )(x)
    x = _batch_norm(prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = _batch_norm(prefix + "project_BN")(x)
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
    x = _batch_norm("bn_Conv1")(x)
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


# MobileNetV3 --------------------------------------------------------------------------------------

# (kernel, expansion, output channels, squeeze-excite, hard-swish, stride) per block, from Howard et
# al. 2019, tables 1 and 2. `minimalistic` turns 5x5 kernels into 3x3, hard-swish into ReLU, drops SE.
_MOBILENETV3_LARGE = (
    (3, 1, 16, False, False, 1), (3, 4, 24, False, False, 2), (3, 3, 24, False, False, 1),
    (5, 3, 40, True, False, 2), (5, 3, 40, True, False, 1), (5, 3, 40, True, False, 1),
    (3, 6, 80, False, True, 2), (3, 2.5, 80, False, True, 1), (3, 2.3, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1), (3, 6, 112, True, True, 1), (3, 6, 112, True, True, 1),
    (5, 6, 160, True, True, 2), (5, 6, 160, True, True, 1), (5, 6, 160, True, True, 1),
)
_MOBILENETV3_SMALL = (
    (3, 1, 16, True, False, 2), (3, 72 / 16, 24, False, False, 2), (3, 88 / 24, 24, False, False, 1),
    (5, 4, 40, True, True, 2), (5, 6, 40, True, True, 1), (5, 6, 40, True, True, 1),
    (5, 3, 48, True, True, 1), (5, 3, 48, True, True, 1), (5, 6, 96, True, True, 2),
    (5, 6, 96, True, True, 1), (5, 6, 96, True, True, 1),
)


def _squeeze_excite(x, prefix):
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(x)
    s = layers.Conv2D(_make_divisible(channels * 0.25), 1, name=f"{prefix}squeeze_excite_conv")(s)
    s = layers.ReLU(name=f"{prefix}squeeze_excite_relu")(s)
    s = layers.Conv2D(channels, 1, name=f"{prefix}squeeze_excite_conv_1")(s)
    s = layers.Activation("hard_sigmoid", name=f"{prefix}squeeze_excite_hard_sigmoid")(s)
    return layers.Multiply(name=f"{prefix}squeeze_excite_mul")([x, s])


def _mobilenetv3_block(x, kernel, expansion, filters, squeeze_excite, activation, stride, rate, block_id):
    prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
    in_channels = x.shape[-1]
    inputs = x
    if block_id:
        x = layers.Conv2D(_make_divisible(in_channels * expansion), 1, use_bias=False, name=prefix + "expand")(x)
        x = _batch_norm(prefix + "expand_bn")(x)
        x = layers.Activation(activation, name=prefix + "expand_act")(x)
    expanded = x
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, dilation_rate=rate, padding="same", use_bias=False, name=prefix + "depthwise"
    )(x)
    x = _batch_norm(prefix + "depthwise_bn")(x)
    x = layers.Activation(activation, name=prefix + "depthwise_act")(x)
    if squeeze_excite:
        x = _squeeze_excite(x, prefix)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = _batch_norm(prefix + "project_bn")(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return expanded, x


def _mobilenetv3(x, schedule, table, alpha, minimalistic):
    features = {}
    activation = "relu" if minimalistic else "hard_swish"
    x = layers.Conv2D(16, 3, strides=schedule(2)[0], padding="same", use_bias=False, name="conv")(x)
    x = _batch_norm("conv_bn")(x)
    x = layers.Activation(activation, name="conv_act")(x)
    for block_id, (kernel, expansion, channels, squeeze_excite, hard_swish, stride) in enumerate(table):
        stride_before = schedule.stride
        strides, rate = schedule(stride)
        expanded, x = _mobilenetv3_block(
            x, 3 if minimalistic else kernel, expansion, _make_divisible(channels * alpha),
            squeeze_excite and not minimalistic, activation if hard_swish else "relu", strides, rate, block_id)
        if strides > 1:
            features[stride_before] = expanded
    x = layers.Conv2D(_make_divisible(x.shape[-1] * 6), 1, use_bias=False, name="conv_1")(x)
    x = _batch_norm("conv_1_bn")(x)
    features[schedule.stride] = layers.Activation(activation, name="conv_1_act")(x)
    return features


def mobilenetv3_large(x, schedule, alpha=1.0, minimalistic=False):
    """MobileNetV3-Large (Howard et al. 2019) with keras.applications names; `alpha` is the width multiplier.

    Features: the expansion before each strided block, and the last 1x1 convolution (conv_1, 6x the
    last block's channels) at the output stride; the classification head is not built.
    """
    return _mobilenetv3(x, schedule, _MOBILENETV3_LARGE, alpha, minimalistic)


def mobilenetv3_small(x, schedule, alpha=1.0, minimalistic=False):
    """MobileNetV3-Small (Howard et al. 2019); features as `mobilenetv3_large`."""
    return _mobilenetv3(x, schedule, _MOBILENETV3_SMALL, alpha, minimalistic)


# Registry -----------------------------------------------------------------------------------------

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


def normalize(pixels, mean, std, bgr=False):
    """(pixels - mean) / std per RGB channel as layers (one MUL and one ADD in LiteRT), then RGB -> BGR if asked."""
    scale = [1 / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        scale, offset = scale[0], offset[0]
    x = layers.Rescaling(scale, offset, name="normalize")(pixels)
    return ReverseChannels(name="rgb_to_bgr")(x) if bgr else x


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
