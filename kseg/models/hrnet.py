"""HRNetV2 (Sun, Zhao, Jiang, Wang 2019, "High-Resolution Representations for Labeling Pixels and Regions",
arXiv:1904.04514; Wang et al. 2019, "Deep High-Resolution Representation Learning for Visual Recognition",
arXiv:1908.07919).

    model = kseg.models.hrnet(num_classes=19, input_shape=(61, 83, 3), variant="w18_small_v1")
    model(numpy.zeros((1, 61, 83, 3))).shape  # (1, 61, 83, 19)

A stem brings the image to stride 4; from there HRNet keeps a stride-4 branch for the whole network
and adds one lower-resolution branch per stage (strides 8, 16, 32). Every module runs residual
blocks on each branch, then fuses: each branch receives the sum of every other branch, brought to
its resolution (1x1 conv-BN then resize up, or chained stride-2 3x3 conv-BN down). The HRNetV2 head
upsamples all four branches to stride 4, concatenates them and classifies every pixel.
"""

import keras
from keras import layers

from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

# Stage configurations of the official HRNet-Semantic-Segmentation experiments
# (experiments/cityscapes/seg_hrnet_*.yaml): per stage the number of modules, the residual block,
# the blocks per branch and the channels per branch (a bottleneck's output is 4x its channels).
VARIANTS = {
    "w18_small_v1": {
        "stage1": {"modules": 1, "block": "bottleneck", "blocks": (1,), "channels": (32,)},
        "stage2": {"modules": 1, "block": "basic", "blocks": (2, 2), "channels": (16, 32)},
        "stage3": {"modules": 1, "block": "basic", "blocks": (2, 2, 2), "channels": (16, 32, 64)},
        "stage4": {"modules": 1, "block": "basic", "blocks": (2, 2, 2, 2), "channels": (16, 32, 64, 128)},
    },
    "w18_small_v2": {
        "stage1": {"modules": 1, "block": "bottleneck", "blocks": (2,), "channels": (64,)},
        "stage2": {"modules": 1, "block": "basic", "blocks": (2, 2), "channels": (18, 36)},
        "stage3": {"modules": 3, "block": "basic", "blocks": (2, 2, 2), "channels": (18, 36, 72)},
        "stage4": {"modules": 2, "block": "basic", "blocks": (2, 2, 2, 2), "channels": (18, 36, 72, 144)},
    },
    **{
        f"w{c}": {
            "stage1": {"modules": 1, "block": "bottleneck", "blocks": (4,), "channels": (64,)},
            "stage2": {"modules": 1, "block": "basic", "blocks": (4, 4), "channels": (c, 2 * c)},
            "stage3": {"modules": 4, "block": "basic", "blocks": (4, 4, 4), "channels": (c, 2 * c, 4 * c)},
            "stage4": {"modules": 3, "block": "basic", "blocks": (4, 4, 4, 4), "channels": (c, 2 * c, 4 * c, 8 * c)},
        }
        for c in (18, 32, 48)
    },
}
EXPANSION = {"basic": 1, "bottleneck": 4}
UPSAMPLING = ("bilinear", "nearest")

@register(
    "hrnet",
    paper="Sun et al. 2019, arXiv:1904.04514; Wang et al. 2019, arXiv:1908.07919",
    tiny={"variant": "w18_small_v1", "width": 8, "stem_filters": 16},
)
def hrnet(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    variant: str = "w48",
    width: int | None = None,
    stem_filters: int = 64,
    upsampling: str = "bilinear",
    name: str = "hrnet",
) -> keras.Model:
    """Builds HRNetV2 for semantic segmentation: four parallel resolution branches and a concatenating head.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) of RGB pixels in [0, 255]; any height and width (odd too),
            or None for a model that takes every size. Every upsampling resizes to the tensor it is
            added to, so branches of ceil-rounded sizes always fuse; the output has the input's size.
        variant: "w18_small_v1", "w18_small_v2", "w18", "w32" or "w48" (the paper's HRNetV2-W48 is the
            default); see `VARIANTS` for the stage configurations.
        width: overrides the variant's branch widths with C, 2C, 4C, 8C for C = `width` (stages 2 to 4;
            stage 1 keeps the variant's bottleneck channels), e.g. 8 for a fast test model.
        stem_filters: channels of the stem's two stride-2 3x3 convolutions (64 in the paper).
        upsampling: "bilinear" (the paper) or "nearest" interpolation, in fusion and in the head.
            Nearest loses less accuracy under full-integer quantization.
        name: the model's name.

    Returns:
        A `keras.Model` from pixels (batch, height, width, 3) to logits (batch, height, width, num_classes).

    Example:

        model = kseg.models.hrnet(19, variant="w18_small_v2")
        logits = model(numpy.zeros((1, 512, 1024, 3), "float32"))  # (1, 512, 1024, 19)
    """
    arguments.common(num_classes, name)
    arguments.one_of("variant", variant, VARIANTS)
    arguments.positive_int("width", width, allow_none=True)
    arguments.positive_int("stem_filters", stem_filters)
    arguments.one_of("upsampling", upsampling, UPSAMPLING)
    stages = _stage_configs(variant, width)

    pixels = blocks.pixel_input(input_shape)
    x = backbones.normalize(pixels, **backbones.TORCH_STYLE)  # the ImageNet statistics HRNet was trained with
    x = blocks.conv_bn_act(x, stem_filters, 3, strides=2, name="stem_conv1")
    x = blocks.conv_bn_act(x, stem_filters, 3, strides=2, name="stem_conv2")

    branches = [x]
    for index, stage in enumerate(stages, start=1):
        if index > 1:
            branches = _transition(branches, stage["channels"], f"transition{index - 1}")
        for module in range(stage["modules"]):
            branches = _module(branches, stage, upsampling, f"stage{index}_module{module}")

    upsampled = [branches[0]] + [
        blocks.resize_like(b, branches[0], upsampling, name=f"head_upsample_branch{i}")
        for i, b in enumerate(branches[1:], start=1)
    ]
    x = layers.Concatenate(name="head_concat")(upsampled)
    x = blocks.conv_bn_act(x, x.shape[-1], 1, name="head")
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, upsampling, name="logits")
    return keras.Model(pixels, logits, name=name)


def _stage_configs(variant, width):
    stages = [dict(VARIANTS[variant][f"stage{i}"]) for i in range(1, 5)]
    if width is not None:
        for stage in stages[1:]:
            stage["channels"] = tuple(width * 2**b for b in range(len(stage["channels"])))
    return stages


def _module(branches, stage, upsampling, name):
    """One high-resolution module: residual blocks on every branch, then multi-resolution fusion."""
    outputs = []
    for b, x in enumerate(branches):
        for k in range(stage["blocks"][b]):
            block_name = f"{name}_branch{b}_block{k}"
            if stage["block"] == "bottleneck":
                x = _bottleneck(x, stage["channels"][b], block_name)
            else:
                x = _basic_block(x, stage["channels"][b], block_name)
        outputs.append(x)
    return _fuse(outputs, upsampling, name) if len(outputs) > 1 else outputs


def _basic_block(x, filters, name):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the input (projected when the channels differ), ReLU."""
    shortcut = x if x.shape[-1] == filters else blocks.conv_bn_act(x, filters, 1, activation=None,
                                                                      name=f"{name}_shortcut")
    x = blocks.conv_bn_act(x, filters, 3, name=f"{name}_conv1")
    x = blocks.conv_bn_act(x, filters, 3, activation=None, name=f"{name}_conv2")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _bottleneck(x, filters, name):
    """1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU, 1x1 conv-BN to 4x `filters`, plus the input, ReLU."""
    out = filters * EXPANSION["bottleneck"]
    shortcut = x if x.shape[-1] == out else blocks.conv_bn_act(x, out, 1, activation=None, name=f"{name}_shortcut")
    x = blocks.conv_bn_act(x, filters, 1, name=f"{name}_conv1")
    x = blocks.conv_bn_act(x, filters, 3, name=f"{name}_conv2")
    x = blocks.conv_bn_act(x, out, 1, activation=None, name=f"{name}_conv3")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _fuse(branches, upsampling, name):
    """Every output branch i is ReLU(sum over j of branch j brought to i's resolution and channels)."""
    fused = []
    for i, target in enumerate(branches):
        filters, terms = target.shape[-1], []
        for j, x in enumerate(branches):
            link = f"{name}_fuse_{j}_to_{i}"
            if j > i:  # lower resolution: project channels, then resize to the target's exact size
                x = blocks.conv_bn_act(x, filters, 1, activation=None, name=link)
                x = blocks.resize_like(x, target, upsampling, name=f"{link}_upsample")
            elif j < i:  # higher resolution: i - j stride-2 3x3 convs, ReLU between them, not after the last
                for k in range(i - j):
                    last = k == i - j - 1
                    x = blocks.conv_bn_act(x, filters if last else x.shape[-1], 3, strides=2,
                                           activation=None if last else "relu", name=f"{link}_down{k}")
            terms.append(x)
        x = layers.Add(name=f"{name}_fuse_to_{i}_add")(terms)
        fused.append(layers.Activation("relu", name=f"{name}_fuse_to_{i}_relu")(x))
    return fused


def _transition(branches, channels, name):
    """Adapts the previous stage's branches to the next stage's channels and adds the next-lower branch.

    An existing branch gets a 3x3 conv-BN-ReLU when its channels change; the new branch is a stride-2
    3x3 conv-BN-ReLU of the lowest-resolution branch.
    """
    out = []
    for i, filters in enumerate(channels):
        if i < len(branches):
            x = branches[i]
            if x.shape[-1] != filters:
                x = blocks.conv_bn_act(x, filters, 3, name=f"{name}_branch{i}")
        else:
            x = branches[-1]
            for k in range(i + 1 - len(branches)):
                last = k == i - len(branches)
                x = blocks.conv_bn_act(x, filters if last else x.shape[-1], 3, strides=2,
                                       name=f"{name}_branch{i}_down{k}")
        out.append(x)
    return out
