"""ResNet-50 and ResNet-101 (He, Zhang, Ren, Sun 2015, arXiv:1512.03385), as kseg backbones."""

from keras import layers

from kseg.models.backbones.common import batch_norm


def _bottleneck(x, filters, stride, rate, projection, name):
    # keras.applications' ResNet (v1) strides in the first 1x1 convolution, not in the 3x3 one.
    shortcut = x
    if projection:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(f"{name}_0_bn", 1.001e-5)(shortcut)
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = batch_norm(f"{name}_1_bn", 1.001e-5)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv")(x)
    x = batch_norm(f"{name}_2_bn", 1.001e-5)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = batch_norm(f"{name}_3_bn", 1.001e-5)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet(x, schedule, depths):
    features = {}
    # Explicit zero padding + "valid", as keras.applications: the same ceil(size / 2) as "same", but
    # centred, which the ImageNet weights were trained with.
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=schedule(2)[0], name="conv1_conv")(x)
    x = batch_norm("conv1_bn", 1.001e-5)(x)
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
