"""LR-ASPP (Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam 2019, "Searching for
MobileNetV3", arXiv:1905.02244, section 6.3): the Lite Reduced Atrous Spatial Pyramid Pooling head.

    model = kseg.models.lraspp(num_classes=21, input_shape=(257, 257, 3))
    model(numpy.zeros((1, 257, 257, 3))).shape  # (1, 257, 257, 21)

The graph is torchvision's `lraspp_mobilenet_v3_large` (the reference implementation): a MobileNetV3 at
output stride 16 (its last stage dilated), then on the stride-16 features a 1x1 conv-BN-ReLU branch
multiplied by a gate (global average pool, 1x1 convolution, sigmoid), upsampled bilinearly to the
stride-8 features; a 1x1 classifier on each of the two, added, and upsampled to the input's size.
The paper gates with a large-kernel average pool of stride (16, 20) instead; torchvision's global pool
is what ships, and it lowers to MEAN, LOGISTIC and MUL, all LiteRT builtins that phone GPU delegates run.
"""

import keras
from keras import layers

from kseg.models import arguments, backbones, blocks
from kseg.models.custom_layers import BN_MOMENTUM, BatchNormalization
from kseg.models.registry import register

BACKBONES = ("mobilenetv3_large", "mobilenetv3_small")
# The low-level features torchvision taps (its "C2"): the output of the block that brings the features to
# the stride, before the stage's stride-1 blocks (40 channels for Large, 24 for Small at stride 8).
LOW_LEVEL_LAYERS = {
    "mobilenetv3_large": {4: "expanded_conv_1_project_bn", 8: "expanded_conv_3_project_bn"},
    "mobilenetv3_small": {4: "expanded_conv_project_bn", 8: "expanded_conv_1_project_bn"},
}
OUTPUT_STRIDES = (8, 16, 32)


@register(
    "lraspp",
    paper="Howard et al. 2019, arXiv:1905.02244",
    tiny={"backbone_kwargs": {"alpha": 0.35}, "head_filters": 16},
    # keras.applications has ImageNet weights for MobileNetV3Large at alpha 0.75, so `small` can start from them.
    small={"backbone_kwargs": {"alpha": 0.75}, "head_filters": 64},
)
def lraspp(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    backbone: str = "mobilenetv3_large",
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    output_stride: int = 16,
    head_filters: int = 128,
    low_level_stride: int = 8,
    torchvision_compatible: bool = False,
    name: str = "lraspp",
) -> keras.Model:
    """Builds LR-ASPP on a MobileNetV3.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) of RGB pixels in [0, 255]; any height and width (odd too),
            or None for a model that takes every size. The output has the input's size.
        backbone: "mobilenetv3_large" (the paper's and torchvision's) or "mobilenetv3_small".
        backbone_weights: None, "imagenet" or a path to a `keras.applications` MobileNetV3 weights file.
        backbone_kwargs: backbone options: {"alpha": 0.75} for a narrower one, {"minimalistic": True}
            for 3x3 kernels, ReLU and no squeeze-excite, {"reduced_tail": True} for the last stage at half its
            channels (the paper's "RF2" for segmentation; torchvision's `reduced_tail`, which its LR-ASPP does
            not use; faster: benchmarks/results/mobile_quiet.md).
        output_stride: stride of the high-level features: 16 (the paper: the last stage dilated), 8
            (the last two stages dilated) or 32 (no dilation).
        head_filters: channels of the gated 1x1 branch (128 in the paper).
        low_level_stride: stride of the low-level features (8 in the paper, or 4); below output_stride.
        torchvision_compatible: compute exactly what torchvision's `lraspp_mobilenet_v3_large` does, so its
            weights convert (`kseg.models.convert`): its ImageNet mean and std, stride-2 convolutions padded
            on every side, the first block of the dilated stage dilated too, and the head's batch norm at
            epsilon 1e-5. Other inputs and outputs as without it; no `backbone_weights`.
        name: the model's name.

    Returns:
        A `keras.Model` from pixels (batch, height, width, 3) to logits (batch, height, width, num_classes).

    Example:

        model = kseg.models.lraspp(19, backbone="mobilenetv3_small")
        logits = model(numpy.zeros((1, 512, 1024, 3), "float32"))  # (1, 512, 1024, 19)
    """
    arguments.common(num_classes, name)
    arguments.one_of("backbone", backbone, BACKBONES)
    arguments.options("backbone_kwargs", backbone_kwargs)
    arguments.one_of("output_stride", output_stride, OUTPUT_STRIDES)
    arguments.positive_int("head_filters", head_filters)
    arguments.one_of("low_level_stride", low_level_stride, tuple(LOW_LEVEL_LAYERS[backbone]))
    if low_level_stride >= output_stride:
        raise ValueError(f"low_level_stride ({low_level_stride}) must be below output_stride ({output_stride})")

    arguments.torchvision_compatible(torchvision_compatible, backbone_weights)

    pixels = blocks.pixel_input(input_shape)
    features = backbones.build(backbone, pixels, output_stride=output_stride, weights=backbone_weights,
                               torchvision=torchvision_compatible, **(backbone_kwargs or {}))
    high = features[output_stride]
    low = keras.Model(pixels, high).get_layer(LOW_LEVEL_LAYERS[backbone][low_level_stride]).output

    if torchvision_compatible:  # torch's BatchNorm2d default epsilon
        x = layers.Conv2D(head_filters, 1, use_bias=False, name="head_cbr_conv")(high)
        x = BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, name="head_cbr_bn")(x)
        x = layers.Activation("relu", name="head_cbr_relu")(x)
    else:
        x = blocks.conv_bn_act(high, head_filters, 1, name="head_cbr")
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="head_scale_pool")(high)
    gate = layers.Conv2D(head_filters, 1, use_bias=False, name="head_scale_conv")(gate)
    gate = layers.Activation("sigmoid", name="head_scale_sigmoid")(gate)
    x = layers.Multiply(name="head_gate")([x, gate])
    x = blocks.resize_like(x, low, name="head_upsample")
    logits = layers.Add(dtype="float32", name="head_add")([
        blocks.classifier(low, num_classes, name="low_classifier"),
        blocks.classifier(x, num_classes, name="high_classifier"),
    ])
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)
