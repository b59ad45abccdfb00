"""VGG-16 and VGG-16 with batch norm (Simonyan and Zisserman 2014, arXiv:1409.1556), as kseg backbones."""

from keras import layers

from kseg.models.blocks import conv_bn_act

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
