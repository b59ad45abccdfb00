"""ResNet-34, ResNet-50 and ResNet-101 (He, Zhang, Ren, Sun 2015, arXiv:1512.03385), as kseg backbones: in
`keras.applications`' conventions (ResNet v1) by default, torchvision's graph (v1.5, torchvision/models/resnet.py)
with `torchvision=True`, dilated as segmentation_models_pytorch dilates it with `smp=True`.

    pixels = keras.Input((None, None, 3))
    features = kseg.models.backbones.build("resnet50", pixels, output_stride=8, torchvision=True)
    features[8].shape  # (None, None, None, 2048): layer4 of torchvision's DeepLabV3 and FCN
"""

from keras import layers

from kseg.models.backbones.common import batch_norm


def _conv_bn(x, filters, kernel, stride, rate, name, torchvision):
    """A convolution and its batch norm: keras.applications' with biases, batch norm at 1.001e-5 and "same"
    padding; torchvision's without biases, at torch's 1e-5, a strided one padded on every side as torch pads
    ("same" pads only bottom and right of an even size)."""
    padding = "same"
    if stride > 1 and kernel > 1 and torchvision:
        x = layers.ZeroPadding2D(rate * (kernel // 2), name=f"{name}_pad")(x)
        padding = "valid"
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, dilation_rate=rate,
                      use_bias=not torchvision, name=f"{name}_conv")(x)
    return batch_norm(f"{name}_bn", 1e-5 if torchvision else 1.001e-5)(x)


def _bottleneck(x, filters, stride, rate, projection, name, torchvision):
    # keras.applications' ResNet (v1) strides in the first 1x1 convolution; torchvision's (v1.5) in the 3x3 one.
    stride_1x1, stride_3x3 = (1, stride) if torchvision else (stride, 1)
    shortcut = _conv_bn(x, 4 * filters, 1, stride, 1, f"{name}_0", torchvision) if projection else x
    x = _conv_bn(x, filters, 1, stride_1x1, 1, f"{name}_1", torchvision)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv_bn(x, filters, 3, stride_3x3, rate, f"{name}_2", torchvision)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv_bn(x, 4 * filters, 1, 1, 1, f"{name}_3", torchvision)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _basic_block(x, filters, stride, rate, projection, name, torchvision):
    # torchvision's BasicBlock: two 3x3 convolutions, the stride in the first; a projection where the shape changes.
    shortcut = _conv_bn(x, filters, 1, stride, 1, f"{name}_0", torchvision) if projection else x
    x = _conv_bn(x, filters, 3, stride, rate, f"{name}_1", torchvision)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv_bn(x, filters, 3, 1, rate, f"{name}_2", torchvision)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet(x, schedule, depths, torchvision, smp, basic=False):
    features = {}
    torchvision = torchvision or smp
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
            # keras-style (and SMP's `make_dilated`, encoders/_base.py): every 3x3 convolution of a dilated stage
            # at the stage's rate; torchvision's `replace_stride_with_dilation` keeps the previous rate in a
            # dilated stage's first block.
            rate = rate if torchvision and not smp else schedule.rate
            name = f"conv{stage}_block{block}"
            if basic:  # ResNet-34's first stage keeps its 64 channels and size: no projection there
                x = _basic_block(x, filters, strides, rate, block == 1 and stage > 2, name, torchvision)
            else:
                x = _bottleneck(x, filters, strides, rate, block == 1, name, torchvision)
        features[schedule.stride] = x
    return features


def resnet34(x, schedule, torchvision=False, smp=False):
    """ResNet-34 (He et al. 2016; torchvision's `resnet34`, BasicBlocks) with keras.applications-style names
    (conv{stage}_block{block}_{1,2}_conv and _0_ for the projection). Features: conv1 and each stage's output.

    keras.applications has no ResNet-34: by default it is built in the conventions of kseg's other ResNets
    (biases, batch norm at 1.001e-5, "same" padding), to train from scratch. `torchvision=True` computes what
    torchvision's `resnet34` does (no biases, batch norm at 1e-5, strided convolutions padded on every side);
    torchvision cannot dilate its BasicBlocks, so past the output stride a dilated stage's first block keeps
    the previous rate as in its Bottleneck ResNets. `smp=True`: torchvision's graph dilated as SMP's encoder is.
    """
    return _resnet(x, schedule, (3, 4, 6, 3), torchvision, smp, basic=True)


def resnet50(x, schedule, torchvision=False, smp=False):
    """ResNet-50 (He et al. 2016) with keras.applications names. Features: conv1 and each stage's output.

    `torchvision=True` computes what torchvision's `resnet50(replace_stride_with_dilation=...)` does (ResNet v1.5:
    the stride in the 3x3 convolution, padded on every side; convolutions without bias; batch norm at epsilon
    1e-5; a dilated stage's first block at the previous rate), for its weights (`kseg.models.convert`).
    `smp=True` computes segmentation_models_pytorch's `resnet50` encoder (encoders/resnet.py): torchvision's
    ResNet whose `make_dilated` (encoders/_base.py, _utils.py) sets every convolution of a stage past the output
    stride to stride 1 and the stage's rate, its first block's 3x3 convolution too.
    """
    return _resnet(x, schedule, (3, 4, 6, 3), torchvision, smp)


def resnet101(x, schedule, torchvision=False, smp=False):
    """ResNet-101 (He et al. 2016) with keras.applications names. Features, `torchvision` and `smp` as `resnet50`."""
    return _resnet(x, schedule, (3, 4, 23, 3), torchvision, smp)
