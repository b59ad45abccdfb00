"""ResNet-50 and ResNet-101 (He, Zhang, Ren, Sun 2015, arXiv:1512.03385), as kseg backbones: `keras.applications`'
ResNet (v1) by default, torchvision's (v1.5, torchvision/models/resnet.py) with `torchvision=True`.

    pixels = keras.Input((None, None, 3))
    features = kseg.models.backbones.build("resnet50", pixels, output_stride=8, torchvision=True)
    features[8].shape  # (None, None, None, 2048): layer4 of torchvision's DeepLabV3 and FCN
"""

from keras import layers

from kseg.models.backbones.common import batch_norm


def _bottleneck(x, filters, stride, rate, projection, name, torchvision):
    # keras.applications' ResNet (v1) strides in the first 1x1 convolution; torchvision's (v1.5) in the 3x3 one,
    # with convolutions without bias and batch norm at torch's epsilon.
    epsilon, bias = (1e-5, False) if torchvision else (1.001e-5, True)
    stride_1x1, stride_3x3 = (1, stride) if torchvision else (stride, 1)
    shortcut = x
    if projection:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, use_bias=bias, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(f"{name}_0_bn", epsilon)(shortcut)
    x = layers.Conv2D(filters, 1, strides=stride_1x1, use_bias=bias, name=f"{name}_1_conv")(x)
    x = batch_norm(f"{name}_1_bn", epsilon)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    padding = "same"
    if stride_3x3 > 1:  # torch pads `rate` on every side; "same" pads only bottom and right of an even size
        x = layers.ZeroPadding2D(rate, name=f"{name}_2_pad")(x)
        padding = "valid"
    x = layers.Conv2D(filters, 3, strides=stride_3x3, padding=padding, dilation_rate=rate, use_bias=bias,
                      name=f"{name}_2_conv")(x)
    x = batch_norm(f"{name}_2_bn", epsilon)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, use_bias=bias, name=f"{name}_3_conv")(x)
    x = batch_norm(f"{name}_3_bn", epsilon)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet(x, schedule, depths, torchvision):
    features = {}
    # Explicit zero padding + "valid", as keras.applications and torch: the same ceil(size / 2) as "same", but
    # centred, which the ImageNet weights were trained with.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=schedule(2)[0], use_bias=not torchvision, name="conv1_conv")(x)
    x = batch_norm("conv1_bn", 1e-5 if torchvision else 1.001e-5)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    features[schedule.stride] = x
    # Zeros pad the max pool as torch's -inf does: its inputs are ReLU outputs, never below 0.
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=schedule(2)[0], name="pool1_pool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), depths), start=2):
        for block in range(1, blocks + 1):
            strides, rate = schedule(2 if block == 1 and stage > 2 else 1)
            # keras-style: the 3x3 convolution follows the (removed) stride, so it already takes the new rate;
            # torchvision's `replace_stride_with_dilation` keeps the previous rate in a dilated stage's first block.
            x = _bottleneck(x, filters, strides, rate if torchvision else schedule.rate, block == 1,
                            f"conv{stage}_block{block}", torchvision)
        features[schedule.stride] = x
    return features


def resnet50(x, schedule, torchvision=False):
    """ResNet-50 (He et al. 2016) with keras.applications names. Features: conv1 and each stage's output.

    `torchvision=True` computes what torchvision's `resnet50(replace_stride_with_dilation=...)` does (ResNet v1.5:
    the stride in the 3x3 convolution, padded on every side; convolutions without bias; batch norm at epsilon
    1e-5; a dilated stage's first block at the previous rate), for its weights (`kseg.models.convert`).
    """
    return _resnet(x, schedule, (3, 4, 6, 3), torchvision)


def resnet101(x, schedule, torchvision=False):
    """ResNet-101 (He et al. 2016) with keras.applications names. Features and `torchvision` as `resnet50`."""
    return _resnet(x, schedule, (3, 4, 23, 3), torchvision)
