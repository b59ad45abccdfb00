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
SMP_RATES = (12, 24, 36)  # SMP's `decoder_atrous_rates` default, at output stride 8 and 16 alike
SMP_EPSILON = 1e-5  # torch's BatchNorm2d default, in SMP's decoder and encoders alike
KERAS_HUB_BACKBONES = ("resnet34", "resnet50", "resnet101")  # keras-hub's ResNetBackbone v1 is torchvision's graph


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
    smp_compatible: bool = False,
    keras_hub_compatible: bool = False,
    pixel_scale: float | Sequence[float] | None = None,
    pixel_offset: float | Sequence[float] | None = None,
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
        smp_compatible: compute exactly what segmentation_models_pytorch's `DeepLabV3Plus` (decoders/deeplabv3/
            decoder.py and model.py, SMP 0.6.0) does on its encoder `backbone` ("resnet34", "resnet50",
            "resnet101" or "mobilenetv2"), so its weights convert (`kseg.models.convert`). Its decoder is not
            this builder's (which follows the paper and the TF DeepLab), so the option builds it instead: SMP's
            encoder (`kseg.models.backbones.build(smp=True)`) after its ImageNet normalisation, at output stride
            16 (SMP's default) or 8; ASPP at rates (12, 24, 36) when `atrous_rates` is None, its branches
            separable convolutions as SMP's SeparableConv2d (depthwise then pointwise, no batch norm between,
            then BN-ReLU), followed by one more such 3x3 convolution of `aspp_filters` channels; an upsampling
            to the stride-4 features (SMP's x4 or x2) and one to the input's size (SMP's head, x4), both bilinear
            with aligned corners (`blocks.torch_resize_like`); the stride-4 features of SMP's encoder projected
            to `low_level_filters` (48 in SMP), then ONE separable 3x3 convolution of `decoder_filters` channels
            (SMP's `decoder_channels` is both `aspp_filters` and `decoder_filters`) and a 1x1 classifier; batch
            norm at 1e-5 throughout; `dropout` 0.5 in SMP. No `backbone_weights`.
        keras_hub_compatible: compute exactly what keras-hub's `DeepLabV3ImageSegmenter` does on its ResNet
            (keras_hub/src/models/deeplab_v3/deeplab_v3_backbone.py, deeplab_v3_layers.py, resnet/resnet_backbone.py;
            keras-hub 0.32), so a keras-hub preset converts (`kseg.models.convert`, "keras_hub:deeplabv3plus"):
            its ResNetBackbone v1 is torchvision's graph (`backbone` "resnet34", "resnet50" or "resnet101"), not
            dilated (`output_stride` must be 32: ASPP on the stride-32 features, keras-hub's P5), after the
            preset's input scaling (`pixel_scale`, `pixel_offset`); ASPP with full 3x3 atrous convolutions (not
            separable); the ASPP output resized to the low-level features, concatenated with their projection,
            then ONE 1x1 conv-BN-ReLU of `decoder_filters` (keras-hub's segmentation head, 256) and the 1x1
            classifier, resized bilinearly to the input (keras-hub resizes before its bias-free classifier: the
            same function, as a 1x1 convolution commutes with the bilinear resize). Batch norm at 1e-3 (Keras's)
            in the decoder, 1e-5 in the ResNet; `dropout` 0 in keras-hub. No `backbone_weights`.
        pixel_scale, pixel_offset: with `keras_hub_compatible`, the preset ImageConverter's `scale` and `offset`
            (pixels * scale + offset; None: 1 and 0, a number or one per RGB channel).
        name: the model's name.

    Example:

        model = kseg.models.deeplabv3plus(2, backbone="resnet34", atrous_rates=(12, 24, 36), dropout=0.5,
                                          smp_compatible=True)
        logits = model(numpy.zeros((1, 64, 96, 3), "float32"))  # (1, 64, 96, 2)
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
    arguments.smp_compatible(smp_compatible, backbone_weights)
    arguments.keras_hub_compatible(keras_hub_compatible, backbone_weights, pixel_scale, pixel_offset)
    rates = tuple(atrous_rates or (SMP_RATES if smp_compatible else DEFAULT_RATES[output_stride]))
    if low_level_stride >= output_stride:
        raise ArgumentError(f"low_level_stride ({low_level_stride}) must be below output_stride ({output_stride})")
    if smp_compatible and (output_stride, low_level_stride) not in ((8, 4), (16, 4)):
        raise ArgumentError("smp_compatible is SMP's DeepLabV3+: output_stride 8 or 16 and low_level_stride 4, "
                            f"not {output_stride} and {low_level_stride}")
    if keras_hub_compatible and (backbone not in KERAS_HUB_BACKBONES or output_stride != 32 or smp_compatible):
        raise ArgumentError(f"keras_hub_compatible is keras-hub's DeepLabV3+ on its ResNet: backbone one of "
                            f"{KERAS_HUB_BACKBONES}, output_stride 32 and no smp_compatible, not {backbone!r}, "
                            f"{output_stride} and {smp_compatible}")
    pixels = blocks.pixel_input(input_shape)
    if keras_hub_compatible:
        x = backbones.rescale(pixels, pixel_scale, pixel_offset)
        features = backbones.get(backbone).build(x, backbones.AtrousSchedule(32), torchvision=True)
        x = blocks.aspp(features[output_stride], aspp_filters, rates, separable=False, dropout=dropout)
        low_level = blocks.conv_bn_act(features[low_level_stride], low_level_filters, 1, name="decoder_low_level")
        x = blocks.resize_like(x, low_level, name="decoder_upsample")
        x = layers.Concatenate(name="decoder_concat")([x, low_level])
        x = blocks.conv_bn_act(x, decoder_filters, 1, name="decoder_conv1")
        logits = blocks.resize_like(blocks.classifier(x, num_classes), pixels, name="logits")
        return keras.Model(pixels, logits, name=name)
    features = backbones.build(backbone, pixels, output_stride=output_stride, weights=backbone_weights,
                               smp=smp_compatible, **(backbone_kwargs or {}))
    if smp_compatible:
        logits = _smp_decoder(features, pixels, num_classes, output_stride=output_stride, rates=rates,
                              aspp_filters=aspp_filters, decoder_filters=decoder_filters,
                              low_level_filters=low_level_filters, dropout=dropout)
        return keras.Model(pixels, logits, name=name)

    x = blocks.aspp(features[output_stride], aspp_filters, rates, separable=True, dropout=dropout)
    low_level = blocks.conv_bn_act(features[low_level_stride], low_level_filters, 1, name="decoder_low_level")
    x = blocks.resize_like(x, low_level, name="decoder_upsample")
    x = layers.Concatenate(name="decoder_concat")([x, low_level])
    x = blocks.separable_conv_bn_act(x, decoder_filters, name="decoder_conv1")
    x = blocks.separable_conv_bn_act(x, decoder_filters, name="decoder_conv2")
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)


def _smp_decoder(features, pixels, num_classes, *, output_stride, rates, aspp_filters, decoder_filters,
                 low_level_filters, dropout):
    """SMP's DeepLabV3PlusDecoder and SegmentationHead (decoders/deeplabv3/decoder.py, base/heads.py): logits."""
    x = features[output_stride]
    branches = [blocks.conv_bn_act(x, aspp_filters, 1, name="aspp_1x1", epsilon=SMP_EPSILON)]
    branches += [_smp_separable(x, aspp_filters, rate, f"aspp_rate{rate}") for rate in rates]
    branches.append(blocks.image_pooling(x, aspp_filters, name="aspp_pooling", epsilon=SMP_EPSILON))
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = blocks.conv_bn_act(x, aspp_filters, 1, name="aspp_projection", epsilon=SMP_EPSILON)
    if dropout:
        x = layers.Dropout(dropout, name="aspp_dropout")(x)
    x = _smp_separable(x, aspp_filters, 1, "aspp_separable")
    low_level = blocks.conv_bn_act(features[4], low_level_filters, 1, name="decoder_low_level", epsilon=SMP_EPSILON)
    x = blocks.torch_resize_like(x, low_level, "bilinear", align_corners=True, name="decoder_upsample")
    x = layers.Concatenate(name="decoder_concat")([x, low_level])
    x = _smp_separable(x, decoder_filters, 1, "decoder_conv1")
    logits = blocks.classifier(x, num_classes)
    return blocks.torch_resize_like(logits, pixels, "bilinear", align_corners=True, name="logits")


def _smp_separable(x, filters, rate, name):
    """SMP's SeparableConv2d (a 3x3 depthwise and a 1x1 convolution, nothing between, no biases), then BN-ReLU."""
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=rate, use_bias=False, name=f"{name}_depthwise")(x)
    return blocks.conv_bn_act(x, filters, 1, name=f"{name}_pointwise", epsilon=SMP_EPSILON)
