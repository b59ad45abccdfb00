"""SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez, Luo 2021, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", arXiv:2105.15203).

    model = kseg.models.segformer(num_classes=150, input_shape=(65, 67, 3), variant="b0")
    model(numpy.zeros((1, 65, 67, 3))).shape  # (1, 65, 67, 150)

A Mix Transformer (MiT) encoder and an all-MLP decoder. Each of the four encoder stages starts with an
overlapping patch embedding (7x7 stride 4, then 3x3 stride 2; zero padding k // 2 and a valid
convolution, as the reference, so stage sizes are ceil(H / 4), ceil(H / 8), ... for every input) and its
LayerNorm, runs transformer blocks (LayerNorm -> efficient self-attention -> residual, LayerNorm ->
Mix-FFN -> residual) and ends with a LayerNorm. Efficient self-attention shortens the keys and values by
a strided convolution (kernel = stride = the reduction ratio) and a LayerNorm; on sizes the ratio does not
divide, that convolution pads ("same", so every pixel is seen; on divisible sizes it is the reference's
unpadded one). Mix-FFN is Linear -> 3x3 depthwise conv -> GELU (exact, erf) -> Linear. The decoder
projects every stage to one width, resizes to the stride-4 map, concatenates (stage 4 first, as the
reference), fuses with a 1x1 conv-BN-ReLU, drops out and classifies; logits are resized bilinearly to
the input. Pixels are RGB in [0, 255], normalised in the graph with the ImageNet mean and std.
`keras_hub_compatible=True` computes keras-hub's SegFormer instead (tanh GELU, its input scaling), for its presets.

Formulated for phones and int8: feature maps stay (batch, height, width, channels) throughout, and every
Linear layer is a 1x1 `Conv2D` (the same function: a reference Linear weight W (out, in) loads as the
kernel W.T reshaped to (1, 1, in, out)), so LiteRT gets CONV_2D ops (per-channel int8, GPU delegate,
int4 through kseg's qat_int4) instead of FULLY_CONNECTED on reshaped tokens. The attention,
`EfficientAttention`, holds no weights: it reshapes query, key and value to (batch, tokens, heads,
head width) and transposes them, so no tensor exceeds 4-D (one head: a reshape only), scales the
query (the smaller operand) by 1/sqrt(head width) before the product, and takes the softmax along the
last axis (LiteRT's SOFTMAX, which int8 runs at its fixed output scale 1/256). LayerNorms are
`LayerNormalization` below: Keras's layer computed in PyTorch's order, so that int16x8 converts and runs.
LayerNorm epsilons follow the reference implementation (NVlabs
SegFormer, mmseg's MiT): 1e-6 in the transformer blocks and after each stage, PyTorch's default 1e-5 in
the patch embeddings and the attention's reduction; the decoder's batch norm uses 1e-5 too. GELU is the
exact (erf) one, as the reference's, written out (`GELU`) so that ONNX export converts it.

Measured against the paper (its ADE20K models, 150 classes, 512x512; its "GFLOPs" are mmcv's count,
which is multiply-accumulates). Parameters, trainable (PyTorch's count): B0 3.75 M (paper 3.8), B1 13.72 M
(13.7), B2 27.46 M (27.5). GMACs (`kseg.complexity.count_macs`, which counts the attention's two matrix
products, as the paper's figures do): B0 8.39 (8.4), of which 1.04 in the attention products, B1 15.88
(15.9), B2 62.34 (62.4).

Quantization-aware training (tfmot, through `kseg.deploy.compression`): the convolutions are tfmot's
own; the attention's tf_keras twin runs the Keras 3 layer's call and fake-quantizes its output, and
LayerNormalization fake-quantizes its output (tfmot has no LayerNormalization config); inside both, the
int8 converter calibrates the ranges as in post-training int8.
"""

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from kseg.models import arguments, backbones, blocks, custom_layers
from kseg.models.registry import register
from kseg.models.segformer_layers import GELU, EfficientAttention, LayerNormalization

# MiT encoders (Xie et al. 2021, table 6 / appendix): per stage widths, blocks, heads and reduction ratios;
# the decoder width of the paper's ADE20K models.
VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"widths": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "heads": (1, 2, 5, 8), "decoder_width": 256},
    "b1": {"widths": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "heads": (1, 2, 5, 8), "decoder_width": 256},
    "b2": {"widths": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "heads": (1, 2, 5, 8), "decoder_width": 768},
}
SR_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
STAGES = 4


def linear(x, units, name):
    """SegFormer's Linear on a (batch, height, width, channels) map: a 1x1 convolution with bias."""
    return layers.Conv2D(units, 1, name=name)(x)


def patch_embedding(x, width, patch_size, stride, name):
    """Overlapping patch embedding: zero padding patch_size // 2, a valid strided convolution, LayerNorm."""
    x = layers.ZeroPadding2D(patch_size // 2, name=f"{name}_pad")(x)
    x = layers.Conv2D(width, patch_size, strides=stride, name=f"{name}_conv")(x)
    return LayerNormalization(epsilon=1e-5, name=f"{name}_norm")(x)


def efficient_self_attention(x, width, heads, sr_ratio, name):
    """Self-attention whose keys and values come from the map reduced by `sr_ratio` (conv + LayerNorm)."""
    query = linear(x, width, f"{name}_query")
    reduced = x
    if sr_ratio > 1:
        reduced = layers.Conv2D(width, sr_ratio, strides=sr_ratio, padding="same", name=f"{name}_sr")(x)
        reduced = LayerNormalization(epsilon=1e-5, name=f"{name}_sr_norm")(reduced)
    key = linear(reduced, width, f"{name}_key")
    value = linear(reduced, width, f"{name}_value")
    mixed = EfficientAttention(heads, name=f"{name}_attention")([query, key, value])
    return linear(mixed, width, f"{name}_output")


def mix_ffn(x, width, hidden, name, approximate_gelu=False):
    """Mix-FFN: Linear -> 3x3 depthwise conv (positional information from zero padding) -> GELU -> Linear."""
    x = linear(x, hidden, f"{name}_fc1")
    x = layers.DepthwiseConv2D(3, padding="same", name=f"{name}_dwconv")(x)
    x = GELU(approximate=approximate_gelu, name=f"{name}_gelu")(x)
    return linear(x, width, f"{name}_fc2")


def drop_path(x, rate, name):
    """Stochastic depth on a residual branch: drops whole samples (Dropout with noise shape (batch, 1, 1, 1))."""
    if not rate:
        return x
    return layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(x)


def transformer_block(x, width, heads, sr_ratio, mlp_ratio, drop_rate, epsilon, name, approximate_gelu=False):
    y = LayerNormalization(epsilon=epsilon, name=f"{name}_norm1")(x)
    y = efficient_self_attention(y, width, heads, sr_ratio, f"{name}_attn")
    x = layers.Add(name=f"{name}_add1")([x, drop_path(y, drop_rate, f"{name}_attn")])
    y = LayerNormalization(epsilon=epsilon, name=f"{name}_norm2")(x)
    y = mix_ffn(y, width, width * mlp_ratio, f"{name}_ffn", approximate_gelu=approximate_gelu)
    return layers.Add(name=f"{name}_add2")([x, drop_path(y, drop_rate, f"{name}_ffn")])


def mix_transformer(x, widths, depths, heads, sr_ratios, mlp_ratio=4, drop_path_rate=0.0, epsilon=1e-6,
                    stage_epsilon=None, approximate_gelu=False):
    """The MiT encoder on a normalised image: the four stages' outputs (strides 4, 8, 16, 32). `epsilon` is the
    blocks' LayerNorms', `stage_epsilon` (default `epsilon`) the stage-closing ones'."""
    features, block = [], 0
    rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]  # linear, as the reference
    for stage in range(STAGES):
        name = f"stage{stage + 1}"
        x = patch_embedding(x, widths[stage], PATCH_SIZES[stage], PATCH_STRIDES[stage], f"{name}_patch_embed")
        for i in range(depths[stage]):
            x = transformer_block(x, width=widths[stage], heads=heads[stage], sr_ratio=sr_ratios[stage],
                                  mlp_ratio=mlp_ratio, drop_rate=rates[block], epsilon=epsilon,
                                  name=f"{name}_block{i + 1}", approximate_gelu=approximate_gelu)
            block += 1
        x = LayerNormalization(epsilon=epsilon if stage_epsilon is None else stage_epsilon, name=f"{name}_norm")(x)
        features.append(x)
    return features


def mlp_decoder(features, width, dropout, name="decoder"):
    """The all-MLP decoder up to the fused stride-4 map: per-stage Linear to `width`, resize, concat, fuse."""
    projected = []
    for stage, feature in enumerate(features):
        x = linear(feature, width, f"{name}_linear_c{stage + 1}")
        projected.append(blocks.resize_like(x, features[0], name=f"{name}_resize_c{stage + 1}"))
    x = layers.Concatenate(name=f"{name}_concat")(projected[::-1])
    x = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_fuse_conv")(x)
    x = custom_layers.BatchNormalization(momentum=custom_layers.BN_MOMENTUM, epsilon=1e-5, name=f"{name}_fuse_bn")(x)
    x = layers.Activation("relu", name=f"{name}_fuse_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


@register(
    "segformer",
    paper="Xie et al. 2021, arXiv:2105.15203",
    tiny={"variant": "b0", "widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "heads": (1, 1, 1, 1),
          "decoder_width": 32, "drop_path_rate": 0.0},
    small={"variant": "b0", "widths": (16, 32, 80, 128), "heads": (1, 2, 5, 8), "decoder_width": 128},
)
def segformer(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    variant: str = "b0",
    widths: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    sr_ratios: Sequence[int] = SR_RATIOS,
    mlp_ratio: int = 4,
    decoder_width: int | None = None,
    drop_path_rate: float = 0.1,
    dropout: float = 0.1,
    layer_norm_epsilon: float = 1e-6,
    keras_hub_compatible: bool = False,
    pixel_scale: float | Sequence[float] | None = None,
    pixel_offset: float | Sequence[float] | None = None,
    name: str = "segformer",
) -> keras.Model:
    """Builds SegFormer: a Mix Transformer encoder and the all-MLP decoder.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) of RGB pixels in [0, 255]; any height and width (odd too), or
            None for a model that takes every size. The output has the input's size.
        variant: "b0", "b1" or "b2" (the paper's MiT-B0/B1/B2 with their decoder widths 256/256/768).
        widths, depths, heads: per-stage channels, transformer blocks and attention heads (4 each);
            default: the variant's. Each width must be divisible by its heads.
        sr_ratios: per-stage spatial-reduction ratios of the keys and values (8, 4, 2, 1).
        mlp_ratio: Mix-FFN hidden width as a multiple of the stage width (4).
        decoder_width: the decoder's common width; default: the variant's.
        drop_path_rate: stochastic depth, rising linearly from 0 over the blocks to this rate (0.1 in the paper).
        dropout: dropout before the classifier (0.1).
        layer_norm_epsilon: epsilon of the blocks' and stages' LayerNorms (1e-6, the reference's).
        keras_hub_compatible: compute exactly what keras-hub's `SegFormerImageSegmenter` on its `MiTBackbone`
            does (keras_hub/src/models/segformer/, mit/mit_backbone.py, mit/mit_layers.py; keras-hub 0.32), so a
            keras-hub preset converts (`kseg.models.convert`, "keras_hub:segformer"): the same graph but GELU's
            tanh approximation (`keras.ops.nn.gelu`'s default) and the stage-closing LayerNorms at 1e-5, and
            the preset's own input scaling (`pixel_scale`, `pixel_offset`) instead of the ImageNet normalisation.
            keras-hub's MiT takes square inputs whose side is a multiple of 32 only; kseg's graph takes any.
        pixel_scale, pixel_offset: with `keras_hub_compatible`, the preset ImageConverter's `scale` and `offset`
            (pixels * scale + offset; None: 1 and 0, a number or one per RGB channel).

    Example:

        model = kseg.models.segformer(150, variant="b0", keras_hub_compatible=True, pixel_scale=1 / 255)
        logits = model(numpy.zeros((1, 64, 64, 3), "float32"))  # (1, 64, 64, 150)
    """
    arguments.common(num_classes, name)
    arguments.one_of("variant", variant, VARIANTS)
    config = VARIANTS[variant]
    widths = tuple(config["widths"] if widths is None else widths)
    depths = tuple(config["depths"] if depths is None else depths)
    heads = tuple(config["heads"] if heads is None else heads)
    decoder_width = config["decoder_width"] if decoder_width is None else decoder_width
    for argument, values in (("widths", widths), ("depths", depths), ("heads", heads), ("sr_ratios", sr_ratios)):
        arguments.positive_ints(argument, values, count=STAGES)
    for stage, (width, count) in enumerate(zip(widths, heads)):
        if width % count:
            raise ValueError(f"widths[{stage}] ({width}) must be divisible by heads[{stage}] ({count}), "
                             f"got widths={widths!r}, heads={heads!r}")
    arguments.positive_int("mlp_ratio", mlp_ratio)
    arguments.positive_int("decoder_width", decoder_width)
    arguments.rate("drop_path_rate", drop_path_rate)
    arguments.rate("dropout", dropout)
    arguments.positive_number("layer_norm_epsilon", layer_norm_epsilon)
    arguments.keras_hub_compatible(keras_hub_compatible, None, pixel_scale, pixel_offset)

    pixels = blocks.pixel_input(input_shape)
    if keras_hub_compatible:
        x = backbones.rescale(pixels, pixel_scale, pixel_offset)
    else:
        x = backbones.normalize(pixels, backbones.TORCH_STYLE["mean"], backbones.TORCH_STYLE["std"])
    features = mix_transformer(x, widths=widths, depths=depths, heads=heads, sr_ratios=tuple(sr_ratios),
                               mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, epsilon=layer_norm_epsilon,
                               stage_epsilon=1e-5 if keras_hub_compatible else None,
                               approximate_gelu=keras_hub_compatible)
    x = mlp_decoder(features, decoder_width, dropout)
    logits = blocks.classifier(x, num_classes)
    logits = blocks.resize_like(logits, pixels, name="logits")
    return keras.Model(pixels, logits, name=name)
