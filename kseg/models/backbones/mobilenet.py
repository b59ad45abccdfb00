"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) and MobileNetV3-Large / -Small (Howard et al. 2019,
arXiv:1905.02244), as kseg backbones."""

from keras import layers

from kseg.models.backbones.common import batch_norm, make_divisible
from kseg.models.custom_layers import HardSwish

# MobileNetV2 --------------------------------------------------------------------------------------

# (expansion, output channels, repeats, first stride) per stage, from Sandler et al. 2018, table 2.
_MOBILENETV2_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _inverted_residual(x, expansion, filters, stride, rate, block_id, torchvision):
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    epsilon = 1e-5 if torchvision else 1e-3  # torch's BatchNorm2d default; keras.applications'
    in_channels = x.shape[-1]
    inputs = x
    if expansion != 1:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = batch_norm(prefix + "expand_BN", epsilon)(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    expanded = x
    x, padding = _strided(x, 3, stride, torchvision, prefix + "pad")
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding=padding, use_bias=False, name=prefix + "depthwise"
    )(x)
    x = batch_norm(prefix + "depthwise_BN", epsilon)(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = batch_norm(prefix + "project_BN", epsilon)(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return expanded, x


# The blocks whose outputs SMP's MobileNetV2 encoder gives (encoders/mobilenet.py: `_out_indexes` 1, 3, 6, 13 of
# torchvision's `features`, block b being features[b + 1]): each stage's last at strides 2 to 16; then features[18]
SMP_BLOCKS = (0, 2, 5, 12)


def mobilenetv2(x, schedule, alpha=1.0, torchvision=False, smp=False):
    """MobileNetV2 (Sandler et al. 2018) with keras.applications layer names; `alpha` is the width multiplier.

    Features: the widest map at each stride (the expansion before each strided block), and the
    320-channel last block at the output stride (the 1280-channel last convolution is built with `smp` only).
    `torchvision=True` computes what torchvision's `mobilenet_v2` does (its ImageNet weights convert): stride-2
    convolutions padded on every side, batch norm at epsilon 1e-5. torchvision has no dilated MobileNetV2;
    past the output stride this one dilates as without the option.
    `smp=True` computes segmentation_models_pytorch's `mobilenet_v2` encoder (encoders/mobilenet.py): torchvision's
    graph with its last 1x1 convolution (Conv_1, 1280 channels, ReLU6); SMP's features (the outputs of
    `SMP_BLOCKS`, then Conv_1's at the output stride); dilated as SMP's `make_dilated` (encoders/_base.py)
    dilates, the block that gives up its stride at the new rate too.
    """
    features = {}
    torchvision = torchvision or smp
    strides, _ = schedule(2)
    x, padding = _strided(x, 3, strides, torchvision, "Conv1_pad")
    x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=strides, padding=padding, use_bias=False, name="Conv1")(x)
    x = batch_norm("bn_Conv1", 1e-5 if torchvision else 1e-3)(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    for expansion, channels, repeats, first_stride in _MOBILENETV2_STAGES:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            stride_before = schedule.stride
            strides, rate = schedule(stride)
            filters = make_divisible(int(channels * alpha))
            expanded, x = _inverted_residual(x, expansion, filters, strides, schedule.rate if smp else rate,
                                             block_id, torchvision)
            if strides > 1 and not smp:
                features[stride_before] = expanded
            if smp and block_id in SMP_BLOCKS:
                features[schedule.stride] = x
            block_id += 1
    if smp:  # torchvision's last `features` layer, 1280 channels (more for alpha > 1)
        x = layers.Conv2D(make_divisible(1280 * max(alpha, 1.0)), 1, use_bias=False, name="Conv_1")(x)
        x = batch_norm("Conv_1_bn", 1e-5)(x)
        x = layers.ReLU(6.0, name="out_relu")(x)
    features[schedule.stride] = x
    return features


# MobileNetV3 --------------------------------------------------------------------------------------

# (kernel, expansion, output channels, squeeze-excite, hard-swish, stride) per block, from Howard et
# al. 2019, tables 1 and 2. `minimalistic` turns 5x5 kernels into 3x3, hard-swish into ReLU, drops SE.
# `reduced_tail` halves the channels of the last stage (its last REDUCED_TAIL blocks and the 1x1 after them).
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
REDUCED_TAIL = 3


def reduced_tail_layers(backbone: str) -> tuple:
    """Name prefixes of the layers of "mobilenetv3_large" or "mobilenetv3_small" in the stage `reduced_tail` halves
    (some keep their shapes: the first block's expansion, depthwise and squeeze-excite)."""
    blocks = len({"mobilenetv3_large": _MOBILENETV3_LARGE, "mobilenetv3_small": _MOBILENETV3_SMALL}[backbone])
    return (*(_block_prefix(block) for block in range(blocks - REDUCED_TAIL, blocks)), "conv_1")


def _block_prefix(block_id):
    return f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"


def _activation(activation, name):
    """MobileNetV3's activations; hard-swish as `HardSwish` (XNNPACK runs its int8 ops, see there)."""
    return HardSwish(name=name) if activation == "hard_swish" else layers.Activation(activation, name=name)


def _squeeze_excite(x, prefix):
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(x)
    s = layers.Conv2D(make_divisible(channels * 0.25), 1, name=f"{prefix}squeeze_excite_conv")(s)
    s = layers.ReLU(name=f"{prefix}squeeze_excite_relu")(s)
    s = layers.Conv2D(channels, 1, name=f"{prefix}squeeze_excite_conv_1")(s)
    s = layers.Activation("hard_sigmoid", name=f"{prefix}squeeze_excite_hard_sigmoid")(s)
    return layers.Multiply(name=f"{prefix}squeeze_excite_mul")([x, s])


def _strided(x, kernel, stride, torchvision, name):
    """Padding of a convolution: "same" (Keras pads one more at the bottom and right on even sizes); torchvision
    pads (kernel - 1) / 2 on every side, which a stride-2 convolution sees as a shift unless padded explicitly."""
    if stride == 1 or not torchvision:
        return x, "same"
    return layers.ZeroPadding2D((kernel - 1) // 2, name=name)(x), "valid"


def _mobilenetv3_block(x, kernel, expansion, filters, squeeze_excite, activation, stride, rate, block_id,
                       torchvision=False):
    prefix = _block_prefix(block_id)
    in_channels = x.shape[-1]
    inputs = x
    if block_id:
        x = layers.Conv2D(make_divisible(in_channels * expansion), 1, use_bias=False, name=prefix + "expand")(x)
        x = batch_norm(prefix + "expand_bn")(x)
        x = _activation(activation, prefix + "expand_act")(x)
    expanded = x
    x, padding = _strided(x, kernel, stride, torchvision, prefix + "depthwise_pad")
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, dilation_rate=rate, padding=padding, use_bias=False, name=prefix + "depthwise"
    )(x)
    x = batch_norm(prefix + "depthwise_bn")(x)
    x = _activation(activation, prefix + "depthwise_act")(x)
    if squeeze_excite:
        x = _squeeze_excite(x, prefix)
    x = layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
    x = batch_norm(prefix + "project_bn")(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return expanded, x


def _mobilenetv3(x, schedule, table, alpha, minimalistic, torchvision, reduced_tail):
    features = {}
    activation = "relu" if minimalistic else "hard_swish"
    strides = schedule(2)[0]
    x, padding = _strided(x, 3, strides, torchvision, "conv_pad")
    x = layers.Conv2D(16, 3, strides=strides, padding=padding, use_bias=False, name="conv")(x)
    x = batch_norm("conv_bn")(x)
    x = _activation(activation, "conv_act")(x)
    for block_id, (kernel, expansion, channels, squeeze_excite, hard_swish, stride) in enumerate(table):
        stride_before = schedule.stride
        strides, rate = schedule(stride)
        if torchvision and strides < stride:  # torchvision dilates the block that gave up its stride too
            rate = schedule.rate
        if reduced_tail and block_id >= len(table) - REDUCED_TAIL:
            channels //= 2
        expanded, x = _mobilenetv3_block(
            x, 3 if minimalistic else kernel, expansion, make_divisible(channels * alpha),
            squeeze_excite and not minimalistic, activation if hard_swish else "relu", strides, rate, block_id,
            torchvision)
        if strides > 1:
            features[stride_before] = expanded
    x = layers.Conv2D(make_divisible(x.shape[-1] * 6), 1, use_bias=False, name="conv_1")(x)
    x = batch_norm("conv_1_bn")(x)
    features[schedule.stride] = _activation(activation, "conv_1_act")(x)
    return features


def mobilenetv3_large(x, schedule, alpha=1.0, minimalistic=False, reduced_tail=False, torchvision=False):
    """MobileNetV3-Large (Howard et al. 2019) with keras.applications names; `alpha` is the width multiplier.
    `reduced_tail=True` halves the last stage's channels, as the paper's segmentation and detection models do
    (its section 6, "RF2"; torchvision's `reduced_tail`); ImageNet weights fill every layer whose shape it keeps.

    Features: the expansion before each strided block, and the last 1x1 convolution (conv_1, 6x the
    last block's channels) at the output stride; the classification head is not built.
    `torchvision=True` computes what torchvision's `mobilenet_v3_large(dilated=True)` does: stride-2
    convolutions padded symmetrically, and the block whose stride became dilation dilated as well.
    """
    return _mobilenetv3(x, schedule, _MOBILENETV3_LARGE, alpha, minimalistic, torchvision, reduced_tail)


def mobilenetv3_small(x, schedule, alpha=1.0, minimalistic=False, reduced_tail=False, torchvision=False):
    """MobileNetV3-Small (Howard et al. 2019); features, `reduced_tail` and `torchvision` as `mobilenetv3_large`."""
    return _mobilenetv3(x, schedule, _MOBILENETV3_SMALL, alpha, minimalistic, torchvision, reduced_tail)
