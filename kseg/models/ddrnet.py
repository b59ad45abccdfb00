"""DDRNet (Hong, Pan, Sun, Jia 2021, "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes", arXiv:2101.06085): DDRNet-23-slim and DDRNet-23.

    model = kseg.models.ddrnet(num_classes=19, input_shape=(65, 67, 3), variant="23-slim")
    model(numpy.zeros((1, 65, 67, 3))).shape  # (1, 65, 67, 19)

A stem of two stride-2 3x3 convolutions brings the image to stride 4; residual basic-block stages go to
stride 8, where the network splits into a high-resolution branch that stays at stride 8 and a
low-resolution branch that goes to strides 16, 32 and 64. After stages 3 and 4 the branches exchange
features (bilateral fusion): the low branch is projected by a 1x1 conv-BN, resized to the high branch
and added to it; the high branch is brought down by stride-2 3x3 conv-BNs and added to the low one, both
from the features before the exchange. A bottleneck stage 5 runs on each branch, the Deep Aggregation
Pyramid Pooling Module (DAPPM) gathers context on the stride-64 branch, and its output, resized to
stride 8 and added to the high branch, feeds a 3x3 conv-BN-ReLU and a 1x1 classifier; the logits are
resized bilinearly to the input's size.

Where kseg differs from the official code (github.com/ydhongHIT/DDRNet), on purpose:
- DAPPM and the segmentation head are written conv -> BN -> ReLU instead of the official pre-activation
  BN -> ReLU -> conv. A batch norm right after a pool, an addition or a concatenation cannot be folded
  into a convolution by the converters and cannot be quantization-aware-trained by
  tensorflow-model-optimization; the reordered modules have the same convolutions, so the same
  parameter count within a few thousand (batch-norm scales now sit on the convolutions' outputs).
- Average pools pad "same" and exclude the padding from the average (PyTorch's count the zeros), and
  every resize goes to the exact size of the tensor it is added to, so any input size works (odd ones
  too; the official code resizes to input // 8 and fails when 8 does not divide it).
- The stem convolutions have no bias (each is followed by batch normalisation, which cancels it).
"""

import keras
from keras import layers

from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

# Widths of the paper's table 1 / the official models: `planes` is the stride-4 stem width (the high
# branch has 2x, the low branch 4x, 8x and 16x), `head_planes` the head's 3x3 convolution and
# `ppm_planes` every DAPPM branch.
VARIANTS = {
    "23-slim": {"planes": 32, "head_planes": 64, "ppm_planes": 128},
    "23": {"planes": 64, "head_planes": 128, "ppm_planes": 128},
}
BASIC_BLOCKS = (2, 2, 2, 2)  # per stage 1 to 4 (DDRNet-23); stage 5 is one bottleneck per branch
BOTTLENECK_EXPANSION = 2
DAPPM_POOLS = ((5, 2), (9, 4), (17, 8))  # (kernel, stride) of the three local average pools


@register(
    "ddrnet",
    paper="Hong et al. 2021, arXiv:2101.06085",
    tiny={"planes": 8, "head_planes": 16, "ppm_planes": 16},
    small={"planes": 16, "head_planes": 32, "ppm_planes": 64},
)
def ddrnet(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    variant: str = "23-slim",
    planes: int | None = None,
    head_planes: int | None = None,
    ppm_planes: int | None = None,
    auxiliary_head: bool = False,
    name: str = "ddrnet",
) -> keras.Model:
    """Builds DDRNet-23-slim (the default) or DDRNet-23.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) of RGB pixels in [0, 255]; any height and width (odd too),
            or None for a model that takes every size. The output has the input's size.
        variant: "23-slim" (planes 32, head_planes 64, ppm_planes 128; 5.7 M parameters in the paper)
            or "23" (64, 128, 128; 20.1 M).
        planes, head_planes, ppm_planes: override the variant's widths (see `VARIANTS`).
        auxiliary_head: add the training-time auxiliary segmentation head on the high-resolution
            branch after the first bilateral fusion (the paper's conv4). The model then has two
            outputs, `[logits, aux_logits]`, both at the input's size; train it with one loss per
            output, e.g. `model.compile(optimizer, loss=[kseg.losses.CrossEntropy()] * 2,
            loss_weights=[1.0, 0.4])` (0.4 as in the paper) and `model.fit(images, (masks, masks))`.
            For inference and export keep the first output:
            `keras.Model(model.input, model.outputs[0])` (same layers, same weights).
        name: the model's name.

    Returns:
        A `keras.Model` from pixels (batch, height, width, 3) to logits (batch, height, width, num_classes).

    Example:

        model = kseg.models.ddrnet(19, variant="23")
        logits = model(numpy.zeros((1, 512, 1024, 3), "float32"))  # (1, 512, 1024, 19)
    """
    arguments.common(num_classes, name)
    arguments.one_of("variant", variant, VARIANTS)
    for argument, value in (("planes", planes), ("head_planes", head_planes), ("ppm_planes", ppm_planes)):
        arguments.positive_int(argument, value, allow_none=True)
    if not isinstance(auxiliary_head, bool):
        raise ValueError(f"auxiliary_head must be True or False, got {auxiliary_head!r}")
    widths = VARIANTS[variant]
    planes = planes or widths["planes"]
    head_planes = head_planes or widths["head_planes"]
    ppm_planes = ppm_planes or widths["ppm_planes"]
    high_planes = 2 * planes

    pixels = blocks.pixel_input(input_shape)
    x = backbones.normalize(pixels, **backbones.TORCH_STYLE)  # the ImageNet statistics DDRNet was trained with
    x = blocks.conv_bn_act(x, planes, 3, strides=2, name="stem_conv1")
    x = blocks.conv_bn_act(x, planes, 3, strides=2, name="stem_conv2")
    x = _stage(x, planes, BASIC_BLOCKS[0], 1, "stage1")  # stride 4
    x = _stage(_relu(x, "stage1"), 2 * planes, BASIC_BLOCKS[1], 2, "stage2")  # stride 8
    shared = _relu(x, "stage2")

    low = _stage(shared, 4 * planes, BASIC_BLOCKS[2], 2, "stage3_low")  # stride 16
    high = _stage(shared, high_planes, BASIC_BLOCKS[2], 1, "stage3_high")  # stride 8
    low, high = _bilateral_fusion(low, high, 1, "fuse3")
    high = auxiliary = _relu(high, "fuse3_high")
    low = _stage(_relu(low, "fuse3_low"), 8 * planes, BASIC_BLOCKS[3], 2, "stage4_low")  # stride 32
    high = _stage(high, high_planes, BASIC_BLOCKS[3], 1, "stage4_high")
    low, high = _bilateral_fusion(low, high, 2, "fuse4")

    low = _bottleneck(_relu(low, "fuse4_low"), 8 * planes, 2, "stage5_low")  # stride 64
    high = _bottleneck(_relu(high, "fuse4_high"), high_planes, 1, "stage5_high")
    context = _dappm(low, ppm_planes, 4 * planes, "dappm")
    context = blocks.resize_like(context, high, name="dappm_upsample")
    x = layers.Add(name="final_add")([context, high])

    logits = _segmentation_head(_relu(x, "head_input"), head_planes, num_classes, "head", "classifier")
    logits = blocks.resize_like(logits, pixels, name="logits")
    if not auxiliary_head:
        return keras.Model(pixels, logits, name=name)
    aux = _segmentation_head(auxiliary, head_planes, num_classes, "aux_head", "aux_classifier")
    aux = blocks.resize_like(aux, pixels, name="aux_logits")
    return keras.Model(pixels, [logits, aux], name=name)


def _relu(x, name):
    """The ReLU the official code applies between stages (a stage's last block ends without one)."""
    return layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters, strides, relu, name):
    """3x3 conv-BN-ReLU (strided), 3x3 conv-BN, plus the input (a strided 1x1 conv-BN when the shape
    changes), then ReLU unless `relu` is False."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = blocks.conv_bn_act(x, filters, 1, strides=strides, activation=None, name=f"{name}_downsample")
    x = blocks.conv_bn_act(x, filters, 3, strides=strides, name=f"{name}_conv1")
    x = blocks.conv_bn_act(x, filters, 3, activation=None, name=f"{name}_conv2")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _stage(x, filters, count, strides, name):
    """`count` basic blocks, the first strided; the last ends without ReLU (the official `no_relu`), since
    the stage's output is also summed with the other branch before it is activated."""
    for i in range(count):
        x = _basic_block(x, filters, strides if i == 0 else 1, relu=i < count - 1, name=f"{name}_block{i}")
    return x


def _bottleneck(x, planes, strides, name):
    """DDRNet's bottleneck (expansion 2): 1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU (strided), 1x1 conv-BN to
    2x `planes`, plus the input (projected when the shape changes), ReLU."""
    out = BOTTLENECK_EXPANSION * planes
    shortcut = x
    if strides != 1 or x.shape[-1] != out:
        shortcut = blocks.conv_bn_act(x, out, 1, strides=strides, activation=None, name=f"{name}_downsample")
    x = blocks.conv_bn_act(x, planes, 1, name=f"{name}_conv1")
    x = blocks.conv_bn_act(x, planes, 3, strides=strides, name=f"{name}_conv2")
    x = blocks.conv_bn_act(x, out, 1, activation=None, name=f"{name}_conv3")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_relu")(x)


def _bilateral_fusion(low, high, down_convs, name):
    """Exchanges features between the branches, both directions from the features before the exchange.

    Low to high: ReLU, 1x1 conv-BN to the high branch's channels, bilinear resize to its size, add.
    High to low: ReLU, `down_convs` stride-2 3x3 conv-BNs (ReLU between them), add.
    """
    down = layers.ReLU(name=f"{name}_down_relu")(high)
    for k in range(down_convs):
        last = k == down_convs - 1
        down = blocks.conv_bn_act(down, low.shape[-1] if last else high.shape[-1] * 2, 3, strides=2,
                                  activation=None if last else "relu", name=f"{name}_down{k}")
    up = layers.ReLU(name=f"{name}_compression_relu")(low)
    up = blocks.conv_bn_act(up, high.shape[-1], 1, activation=None, name=f"{name}_compression")
    up = blocks.resize_like(up, high, name=f"{name}_upsample")
    return (layers.Add(name=f"{name}_low_add")([low, down]),
            layers.Add(name=f"{name}_high_add")([high, up]))


def _dappm(x, branch_planes, out_planes, name):
    """Deep Aggregation Pyramid Pooling Module (section 3.3), conv -> BN -> ReLU throughout.

    Branch 0 is a 1x1 conv of `x`; branches 1-3 average-pool `x` (kernels 5, 9, 17, strides 2, 4, 8,
    "same" padding), branch 4 pools it globally; each is a 1x1 conv-BN-ReLU resized back to `x`'s size,
    added to the previous branch's output and fused by a 3x3 conv-BN-ReLU (hierarchical residual fusion).
    The five are concatenated, compressed by a 1x1 conv-BN and added to a 1x1 conv-BN shortcut of `x`.
    """
    outputs = [blocks.conv_bn_act(x, branch_planes, 1, name=f"{name}_scale0")]
    pools = [layers.AveragePooling2D(kernel, strides=stride, padding="same", name=f"{name}_scale{i}_pool")
             for i, (kernel, stride) in enumerate(DAPPM_POOLS, start=1)]
    pools.append(layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_scale4_pool"))
    for i, pool in enumerate(pools, start=1):
        y = blocks.conv_bn_act(pool(x), branch_planes, 1, name=f"{name}_scale{i}")
        y = blocks.resize_like(y, x, name=f"{name}_scale{i}_upsample")
        y = layers.Add(name=f"{name}_process{i}_add")([y, outputs[-1]])
        outputs.append(blocks.conv_bn_act(y, branch_planes, 3, name=f"{name}_process{i}"))
    y = layers.Concatenate(name=f"{name}_concat")(outputs)
    y = blocks.conv_bn_act(y, out_planes, 1, activation=None, name=f"{name}_compression")
    shortcut = blocks.conv_bn_act(x, out_planes, 1, activation=None, name=f"{name}_shortcut")
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _segmentation_head(x, filters, num_classes, name, classifier):
    """3x3 conv-BN-ReLU, then a 1x1 classifier with bias, on activated features. The official head starts
    BN -> ReLU; kseg keeps the ReLU (its callers apply it) and drops that BN, which after an addition
    could neither fold into a convolution nor be quantization-aware-trained."""
    x = blocks.conv_bn_act(x, filters, 3, name=name)
    return blocks.classifier(x, num_classes, name=classifier)
