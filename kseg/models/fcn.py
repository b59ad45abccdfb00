"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer, Darrell 2015, "Fully Convolutional Networks for
Semantic Segmentation", arXiv:1411.4038).

    model = kseg.models.fcn8s(num_classes=21, input_shape=(250, 333, 3))
    model(numpy.zeros((1, 250, 333, 3))).shape  # (1, 250, 333, 21)
"""

from collections.abc import Sequence

import keras
from keras import layers

from kseg.errors import ArgumentError
from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

_TINY = {"backbone": "vgg16_bn", "backbone_kwargs": {"width": 0.125}, "fc_filters": 64, "dropout": 0.0}


def fcn(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    skips: Sequence[int] = (16, 8),
    backbone: str = "vgg16",
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    fc_filters: int = 4096,
    dropout: float = 0.5,
    torchvision_compatible: bool = False,
    name: str = "fcn",
) -> keras.Model:
    """Builds an FCN: VGG16 with fc6/fc7 as convolutions, a class score at stride 32, and learned 2x
    upsamplings that fuse scores of pool4 (stride 16) and pool3 (stride 8) before the final upsampling.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) RGB pixels in [0, 255]; any size (the output is cropped to it).
        skips: strides whose pool features are fused: () is FCN-32s, (16,) FCN-16s, (16, 8) FCN-8s.
        backbone: a registry backbone with features at stride 32 and at every skip stride.
        backbone_weights: None, "imagenet" or a path to a `keras.applications` weights file.
        backbone_kwargs: backbone options (e.g. {"width": 0.25} for a narrow VGG16).
        fc_filters: channels of fc6 (7x7) and fc7 (1x1); 4096 in the paper.
        dropout: after fc6 and fc7, as in the paper.
        torchvision_compatible: compute exactly what torchvision's `fcn_resnet50` and `fcn_resnet101` do, so their
            weights convert (`kseg.models.convert`); FCN-32s only (`skips=()`: one upsampling). torchvision's FCN
            (torchvision/models/segmentation/fcn.py) is not the paper's VGG16 one: the backbone's torchvision graph
            (`kseg.models.backbones.build(torchvision=True)`, "resnet50" or "resnet101") at output stride 8
            (its last two stages dilated), then torchvision's FCNHead: a 3x3 conv-BN-ReLU of `fc_filters`
            channels (512 in torchvision, a quarter of the backbone's; batch norm at epsilon 1e-5), `dropout`
            (0.1 in torchvision) and a 1x1 classifier, upsampled bilinearly (half-pixel centres) to the input.
        name: the model's name.

    Upsampling is `Conv2DTranspose` initialised to bilinear interpolation (trainable); the paper's
    100-pixel input padding is replaced by "same" convolutions and a crop to the input size.

    Example:

        model = kseg.models.fcn32s(21, backbone="resnet50", fc_filters=512, dropout=0.1, torchvision_compatible=True)
        logits = model(numpy.zeros((1, 65, 97, 3), "float32"))  # (1, 65, 97, 21)
    """
    arguments.common(num_classes, name)
    if not set(skips) <= {16, 8} or len(set(skips)) != len(skips) or list(skips) != sorted(skips, reverse=True):
        raise ArgumentError(f"skips must be (), (16,) or (16, 8), got {skips!r}")
    arguments.positive_int("fc_filters", fc_filters)
    arguments.rate("dropout", dropout)
    arguments.options("backbone_kwargs", backbone_kwargs)
    arguments.torchvision_compatible(torchvision_compatible, backbone_weights)
    pixels = blocks.pixel_input(input_shape)
    if torchvision_compatible:
        if skips:
            raise ArgumentError(f"torchvision_compatible is torchvision's FCN, with no skips (fcn32s), not {skips!r}")
        features = backbones.build(backbone, pixels, output_stride=8, torchvision=True, **(backbone_kwargs or {}))
        x = blocks.conv_bn_act(features[8], fc_filters, 3, name="head", epsilon=1e-5)  # torch's BatchNorm2d default
        x = layers.Dropout(dropout, name="head_dropout")(x)
        logits = blocks.resize_like(blocks.classifier(x, num_classes), pixels, name="logits")
        return keras.Model(pixels, logits, name=name)
    features = backbones.build(backbone, pixels, output_stride=32, weights=backbone_weights,
                               **(backbone_kwargs or {}))
    x = blocks.conv_bn_act(features[32], fc_filters, 7, norm=None, name="fc6")
    x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = blocks.conv_bn_act(x, fc_filters, 1, norm=None, name="fc7")
    x = layers.Dropout(dropout, name="fc7_dropout")(x)
    scores = layers.Conv2D(num_classes, 1, name="score_fr")(x)

    stride = 32
    for skip in skips:
        up = blocks.learned_upsampling(scores, num_classes, stride // skip, name=f"upscore_to{skip}")
        # Zero-initialised skip scores: training starts from the coarser net's prediction (paper, 4.2).
        skip_scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=f"score_pool{skip}")(
            features[skip])
        scores = layers.Add(name=f"fuse_pool{skip}")([blocks.crop_like(up, skip_scores, f"crop_to{skip}"),
                                                      skip_scores])
        stride = skip
    logits = blocks.learned_upsampling(scores, num_classes, stride, name="upscore_final")
    logits = blocks.crop_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)


_PAPER = "Long et al. 2015, arXiv:1411.4038"


@register("fcn32s", paper=_PAPER, tiny=_TINY)
def fcn32s(num_classes: int, input_shape: tuple = (None, None, 3), **kwargs) -> keras.Model:
    """FCN-32s: the stride-32 scores upsampled 32x in one step. Arguments as `fcn`, less `skips`;
    `torchvision_compatible=True` is torchvision's `fcn_resnet50` / `fcn_resnet101` (see `fcn`)."""
    return fcn(num_classes, input_shape, skips=(), **{"name": "fcn32s", **kwargs})


@register("fcn16s", paper=_PAPER, tiny=_TINY)
def fcn16s(num_classes: int, input_shape: tuple = (None, None, 3), **kwargs) -> keras.Model:
    """FCN-16s: stride-32 scores fused with pool4's, then upsampled 16x. Arguments as `fcn`, less `skips`."""
    return fcn(num_classes, input_shape, skips=(16,), **{"name": "fcn16s", **kwargs})


@register("fcn8s", paper=_PAPER, tiny=_TINY)
def fcn8s(num_classes: int, input_shape: tuple = (None, None, 3), **kwargs) -> keras.Model:
    """FCN-8s: scores fused with pool4's and pool3's, then upsampled 8x. Arguments as `fcn`, less `skips`."""
    return fcn(num_classes, input_shape, skips=(16, 8), **{"name": "fcn8s", **kwargs})
