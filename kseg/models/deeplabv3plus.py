"""DeepLabV3+ (Chen, Zhu, Papandreou, Schroff, Adam 2018, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", arXiv:1802.02611).

    model = kseg.models.deeplabv3plus(num_classes=21, input_shape=(257, 257, 3), backbone="mobilenetv2")
    model(numpy.zeros((1, 257, 257, 3))).shape  # (1, 257, 257, 21)
"""

from collections.abc import Sequence

import keras
from keras import layers

from kseg.errors import ArgumentError
from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


@register(
    "deeplabv3plus",
    paper="Chen et al. 2018, arXiv:1802.02611",
    tiny={"backbone_kwargs": {"alpha": 0.35}, "aspp_filters": 32, "decoder_filters": 32, "low_level_filters": 16},
    small={"backbone_kwargs": {"alpha": 0.5}, "aspp_filters": 128, "decoder_filters": 128, "low_level_filters": 32},
)
def deeplabv3plus(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    backbone: str = "mobilenetv2",
    output_stride: int = 16,
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    atrous_rates: Sequence[int] | None = None,
    aspp_filters: int = 256,
    decoder_filters: int = 256,
    low_level_filters: int = 48,
    low_level_stride: int = 4,
    dropout: float = 0.1,
    name: str = "deeplabv3plus",
) -> keras.Model:
    """Builds DeepLabV3+: an atrous backbone, ASPP with image pooling, and a decoder fed low-level features.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) of RGB pixels in [0, 255]; any height and width (odd too),
            or None for a model that takes every size. The output has the input's size.
        backbone: a name from `kseg.models.backbones.names()`.
        output_stride: 8, 16 or 32; strides beyond it become atrous (dilated) convolutions.
        backbone_weights: None, "imagenet" or a path to a `keras.applications` weights file.
        backbone_kwargs: backbone options, e.g. {"alpha": 0.5} for a narrower MobileNetV2.
        atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16, doubled at 8, halved at 32.
        aspp_filters, decoder_filters: channels of ASPP and of the decoder's separable convolutions.
        low_level_filters: channels the stride-`low_level_stride` features are projected to (48 in the paper).
        dropout: dropout after the ASPP projection.
    """
    arguments.common(num_classes, name)
    arguments.one_of("output_stride", output_stride, DEFAULT_RATES)
    arguments.one_of("low_level_stride", low_level_stride, (2, 4, 8, 16))
    if atrous_rates is not None:
        arguments.positive_ints("atrous_rates", atrous_rates)
    for argument, value in (("aspp_filters", aspp_filters), ("decoder_filters", decoder_filters),
                            ("low_level_filters", low_level_filters)):
        arguments.positive_int(argument, value)
    arguments.rate("dropout", dropout)
    arguments.options("backbone_kwargs", backbone_kwargs)
    rates = tuple(atrous_rates or DEFAULT_RATES[output_stride])
    if low_level_stride >= output_stride:
        raise ArgumentError(f"low_level_stride ({low_level_stride}) must be below output_stride ({output_stride})")
    pixels = blocks.pixel_input(input_shape)
    features = backbones.build(
        backbone, pixels, output_stride=output_stride, weights=backbone_weights, **(backbone_kwargs or {})
    )

    x = blocks.aspp(features[output_stride], aspp_filters, rates, separable=True, dropout=dropout)
    low_level = blocks.conv_bn_act(features[low_level_stride], low_level_filters, 1, name="decoder_low_level")
    x = blocks.resize_like(x, low_level, name="decoder_upsample")
    x = layers.Concatenate(name="decoder_concat")([x, low_level])
    x = blocks.separable_conv_bn_act(x, decoder_filters, name="decoder_conv1")
    x = blocks.separable_conv_bn_act(x, decoder_filters, name="decoder_conv2")
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)
