"""Xception, DeepLab's aligned variant (Chollet 2016, arXiv:1610.02357; Chen et al. 2018), as a kseg backbone."""

from keras import layers

from kseg.models.backbones.common import batch_norm


def _separable(x, filters, rate, name, activate_first=True):
    if activate_first:
        x = layers.Activation("relu", name=f"{name}_act")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same", dilation_rate=rate, use_bias=False, name=name)(x)
    return batch_norm(f"{name}_bn")(x)


def _xception_down_block(x, block, filters, schedule, features):
    """Two separable convolutions and a strided max pool, plus a strided 1x1 projection shortcut."""
    rate, stride_before = schedule.rate, schedule.stride
    strides, _ = schedule(2)
    if strides > 1:
        features[stride_before] = x
    # Unnamed in keras.applications; `load_weights` pairs these with the twin's in graph order.
    residual = layers.Conv2D(
        filters[1], 1, strides=strides, padding="same", use_bias=False, name=f"block{block}_residual_conv")(x)
    residual = batch_norm(f"block{block}_residual_bn")(residual)
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
    x = batch_norm("block1_conv1_bn")(x)
    x = layers.Activation("relu", name="block1_conv1_act")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="block1_conv2")(x)
    x = batch_norm("block1_conv2_bn")(x)
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
