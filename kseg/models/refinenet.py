"""RefineNet (Lin, Milan, Shen, Reid 2017, "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation", arXiv:1611.06612), the 4-cascaded variant.

    model = kseg.models.refinenet(num_classes=21, input_shape=(250, 333, 3), backbone="resnet101")
    model(numpy.zeros((1, 250, 333, 3))).shape  # (1, 250, 333, 21)
"""

from collections.abc import Sequence

import keras
from keras import layers

from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register


@register(
    "refinenet",
    paper="Lin et al. 2017, arXiv:1611.06612",
    tiny={"backbone": "mobilenetv2", "backbone_kwargs": {"alpha": 0.35}, "filters": (32, 16, 16, 16)},
)
def refinenet(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    backbone: str = "resnet101",
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    filters: Sequence[int] = (512, 256, 256, 256),
    pooling_stages: int = 2,
    dropout: float = 0.5,
    name: str = "refinenet",
) -> keras.Model:
    """Builds a 4-cascaded RefineNet: backbone features at strides 32, 16, 8 and 4 enter RefineNet-4
    to RefineNet-1 in turn; each block refines its inputs with residual conv units, fuses the
    resolutions by summation, gathers context with chained residual pooling, and ends in an RCU.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) RGB pixels in [0, 255]; any size (fusion resizes to the finer input).
        backbone: a registry backbone ("resnet50" and "resnet101" in the paper).
        backbone_weights: None, "imagenet" or a path to a `keras.applications` weights file.
        backbone_kwargs: backbone options.
        filters: channels of RefineNet-4, -3, -2 and -1 (512, 256, 256, 256 in the paper).
        pooling_stages: pool-conv stages of each chained residual pooling: 2 in the paper's figure 3,
            4 in the authors' released code (RefineNet-101 then has about 118 M parameters).
        dropout: before the final classifier.

    As in the paper, the refinement path has no batch normalisation, so it exports to LiteRT as
    plain CONV_2D / MAX_POOL_2D / ADD ops.
    """
    arguments.common(num_classes, name)
    arguments.positive_ints("filters", filters, count=4)  # RefineNet-4 to -1
    arguments.positive_int("pooling_stages", pooling_stages)
    arguments.rate("dropout", dropout)
    arguments.options("backbone_kwargs", backbone_kwargs)
    pixels = blocks.pixel_input(input_shape)
    features = backbones.build(backbone, pixels, output_stride=32, weights=backbone_weights,
                               **(backbone_kwargs or {}))
    x = None
    for level, (stride, width) in enumerate(zip((32, 16, 8, 4), filters)):
        block = 4 - level
        # The paper's dimension-reducing 3x3 convolution on each backbone feature map.
        feature = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"refine{block}_adapt")(
            features[stride])
        inputs = [feature] if x is None else [feature, x]
        x = refine_block(inputs, width, pooling_stages, name=f"refine{block}")
    x = blocks.residual_conv_unit(x, filters[-1], name="head_rcu1")
    x = blocks.residual_conv_unit(x, filters[-1], name="head_rcu2")
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)


def refine_block(inputs, filters, pooling_stages=2, name="refine"):
    """A RefineNet block (figure 3): 2 RCUs per input, multi-resolution fusion, chained residual
    pooling and an output RCU. `inputs[0]` is the finest input; the others are resized to it."""
    paths = []
    for i, x in enumerate(inputs):
        width = x.shape[-1]
        x = blocks.residual_conv_unit(x, width, name=f"{name}_input{i}_rcu1")
        paths.append(blocks.residual_conv_unit(x, width, name=f"{name}_input{i}_rcu2"))
    if len(paths) > 1:  # multi-resolution fusion: 3x3 convs to a common width, upsample, sum
        fused = [layers.Conv2D(filters, 3, padding="same", name=f"{name}_fuse{i}_conv")(p)
                 for i, p in enumerate(paths)]
        fused = [fused[0]] + [blocks.resize_like(p, fused[0], name=f"{name}_fuse{i}_upsample")
                              for i, p in enumerate(fused[1:], start=1)]
        x = layers.Add(name=f"{name}_fuse")(fused)
    else:
        x = paths[0]
    x = blocks.chained_residual_pooling(x, filters, pooling_stages, name=f"{name}_crp")
    return blocks.residual_conv_unit(x, filters, name=f"{name}_output_rcu")
