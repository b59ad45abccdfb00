"""DeepLabV3 (Chen, Papandreou, Schroff, Adam 2017, "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv:1706.05587).

    model = kseg.models.deeplabv3(num_classes=21, input_shape=(513, 513, 3), backbone="resnet50")
    model(numpy.zeros((1, 513, 513, 3))).shape  # (1, 513, 513, 21)
"""

from collections.abc import Sequence

import keras

from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
TORCHVISION_RATES = (12, 24, 36)  # torchvision's DeepLabHead, at output stride 8 and 16 alike


@register(
    "deeplabv3",
    paper="Chen et al. 2017, arXiv:1706.05587",
    tiny={"backbone": "mobilenetv2", "backbone_kwargs": {"alpha": 0.35}, "aspp_filters": 32, "output_stride": 8},
)
def deeplabv3(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    backbone: str = "resnet50",
    output_stride: int = 16,
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    atrous_rates: Sequence[int] | None = None,
    aspp_filters: int = 256,
    dropout: float = 0.1,
    torchvision_compatible: bool = False,
    name: str = "deeplabv3",
) -> keras.Model:
    """Builds DeepLabV3: an atrous backbone (output stride 8 or 16) and ASPP with image-level pooling,
    then a 1x1 classifier whose logits are upsampled bilinearly to the input size.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) RGB pixels in [0, 255]; any size, odd too.
        backbone: a name from `kseg.models.backbones.names()` (ResNet-50/101 in the paper).
        output_stride: 8 or 16; strides beyond it become atrous convolutions.
        backbone_weights: None, "imagenet" or a path to a `keras.applications` weights file.
        backbone_kwargs: backbone options, e.g. {"alpha": 0.5} for a narrower MobileNetV2.
        atrous_rates: ASPP rates; (6, 12, 18) at output stride 16 and (12, 24, 36) at 8, as in the paper.
        aspp_filters: channels of every ASPP branch and of its projection (256 in the paper).
        dropout: after the ASPP projection.
        torchvision_compatible: compute exactly what torchvision's `deeplabv3_resnet50`, `deeplabv3_resnet101` and
            `deeplabv3_mobilenet_v3_large` do, so their weights convert (`kseg.models.convert`): the backbone's
            torchvision graph (`kseg.models.backbones.build(torchvision=True)`) after torchvision's ImageNet
            normalisation, torchvision's DeepLabHead (its ASPP at rates (12, 24, 36) when `atrous_rates` is
            None, at every output stride; then a 3x3 conv-BN-ReLU of `aspp_filters` channels before the
            classifier) and batch norm at epsilon 1e-5 in the head. torchvision's models run at output stride 8
            (ResNets) or 16 (MobileNetV3-Large) with dropout 0.5; no `backbone_weights`.
        name: the model's name.

    Example:

        model = kseg.models.deeplabv3(21, backbone="resnet50", output_stride=8, torchvision_compatible=True)
        logits = model(numpy.zeros((1, 65, 97, 3), "float32"))  # (1, 65, 97, 21)
    """
    arguments.common(num_classes, name)
    arguments.one_of("output_stride", output_stride, DEFAULT_RATES)
    if atrous_rates is not None:
        arguments.positive_ints("atrous_rates", atrous_rates)
    arguments.positive_int("aspp_filters", aspp_filters)
    arguments.rate("dropout", dropout)
    arguments.options("backbone_kwargs", backbone_kwargs)
    arguments.torchvision_compatible(torchvision_compatible, backbone_weights)
    pixels = blocks.pixel_input(input_shape)
    features = backbones.build(backbone, pixels, output_stride=output_stride, weights=backbone_weights,
                               torchvision=torchvision_compatible, **(backbone_kwargs or {}))
    rates = tuple(atrous_rates or (TORCHVISION_RATES if torchvision_compatible else DEFAULT_RATES[output_stride]))
    epsilon = 1e-5 if torchvision_compatible else 1e-3  # torch's BatchNorm2d default; Keras's
    x = blocks.aspp(features[output_stride], aspp_filters, rates, separable=False, dropout=dropout, epsilon=epsilon)
    if torchvision_compatible:
        x = blocks.conv_bn_act(x, aspp_filters, 3, name="head", epsilon=epsilon)
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)
