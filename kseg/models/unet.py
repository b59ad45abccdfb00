"""U-Net (Ronneberger, Fischer, Brox 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation").

    model = kseg.models.unet(num_classes=3, input_shape=(250, 333, 3), filters=16, depth=4)
    model(numpy.zeros((1, 250, 333, 3))).shape  # (1, 250, 333, 3)
"""

import keras
from keras import layers

from kseg.errors import ArgumentError
from kseg.models import arguments, backbones, blocks
from kseg.models.registry import register

UPSAMPLING = ("bilinear", "nearest", "transpose")
SMP_UPSAMPLING = ("nearest", "bilinear")  # SMP's `decoder_interpolation`s that kseg computes as torch does


@register("unet", paper="Ronneberger et al. 2015, arXiv:1505.04597", tiny={"filters": 8, "depth": 3},
          small={"filters": 16, "depth": 3})
def unet(
    num_classes: int,
    input_shape: tuple = (None, None, 3),
    filters: int = 64,
    depth: int = 4,
    norm: str = "batch",
    upsampling: str = "bilinear",
    dropout: float = 0.0,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    backbone_kwargs: dict | None = None,
    smp_compatible: bool = False,
    name: str = "unet",
) -> keras.Model:
    """Builds a U-Net: `depth` down-sampling levels, a bottleneck, and a mirrored decoder with skips.

    Args:
        num_classes: output channels (per-class logits; 1 for binary segmentation with a sigmoid loss).
        input_shape: (height, width, channels); height and width may be None or any size (odd too):
            the decoder resizes to each skip's size, so the output always has the input's size.
        filters: channels of the first level; each level doubles them.
        depth: number of 2x down-sampling levels (the paper uses 4).
        norm: "batch" (default), "group", "layer" or "none" (the paper predates batch normalisation).
        upsampling: "bilinear" or "nearest" resize, or "transpose" (the paper's learned 2x2 up-convolution).
        dropout: dropout rate at the bottleneck (the paper uses 0.5 there).
        backbone: None for the paper's encoder, or a registry backbone (e.g. "resnet50") whose
            stride 2 to 32 features become the skips; the decoder then has five levels of `filters` *
            (16, 8, 4, 2, 1) channels, the last one at full resolution.
        backbone_weights: None, "imagenet" or a weights file, for a registry backbone.
        backbone_kwargs: options of the registry backbone, e.g. {"alpha": 0.5}.
        smp_compatible: compute exactly what segmentation_models_pytorch's `Unet` (decoders/unet/decoder.py and
            model.py, SMP 0.6.0) does on its encoder `backbone` ("resnet34", "resnet50", "resnet101" or
            "mobilenetv2", SMP's "mobilenet_v2"), so its weights convert (`kseg.models.convert`): SMP's encoder
            (`kseg.models.backbones.build(smp=True)`) after its ImageNet normalisation; per decoder block an
            upsampling to the skip's size as torch's `F.interpolate` computes it (`upsampling` "nearest", SMP's
            default, or "bilinear"), the concatenation [upsampled, skip] and two 3x3 conv-BN-ReLU (batch norm at
            1e-5; `norm="none"`: biases instead, SMP's `decoder_use_norm=False`); a 3x3 convolution to the
            logits (SMP's SegmentationHead). SMP's default `decoder_channels` (256, 128, 64, 32, 16) are
            `filters=16`. No `backbone_weights`.
        name: the model's name.

    Example:

        model = kseg.models.unet(2, backbone="resnet34", filters=16, upsampling="nearest", smp_compatible=True)
        logits = model(numpy.zeros((1, 64, 96, 3), "float32"))  # (1, 64, 96, 2)
    """
    arguments.common(num_classes, name)
    arguments.positive_int("filters", filters)
    arguments.positive_int("depth", depth)
    arguments.one_of("norm", norm, blocks.NORMALIZATIONS)
    arguments.one_of("upsampling", upsampling, UPSAMPLING)
    arguments.rate("dropout", dropout)
    arguments.options("backbone_kwargs", backbone_kwargs)
    arguments.smp_compatible(smp_compatible, backbone_weights)
    if smp_compatible:
        if backbone is None:
            raise ArgumentError("smp_compatible is SMP's Unet on one of its encoders: it needs a backbone")
        arguments.one_of("upsampling", upsampling, SMP_UPSAMPLING)
        arguments.one_of("norm", norm, ("batch", "none"))
    pixels = blocks.pixel_input(input_shape)
    if backbone is not None:
        return _backbone_unet(num_classes, pixels, filters, norm, upsampling, backbone, backbone_weights,
                              backbone_kwargs, name, smp=smp_compatible)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(pixels)

    skips = []
    for level in range(depth):
        x = _double_conv(x, filters * 2**level, norm, f"encoder{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"encoder{level}_pool")(x)
    x = _double_conv(x, filters * 2**depth, norm, "bottleneck")
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        x = _decoder_level(x, skips[level], filters * 2**level, norm, upsampling, f"decoder{level}")
    logits = blocks.classifier(x, num_classes)
    return keras.Model(pixels, logits, name=name)


def _backbone_unet(num_classes, pixels, filters, norm, upsampling, backbone, weights, backbone_kwargs, name,
                   smp=False):
    features = backbones.build(backbone, pixels, output_stride=32, weights=weights, smp=smp, **(backbone_kwargs or {}))
    x = features[32]
    for level, stride in enumerate((16, 8, 4, 2)):
        x = _decoder_level(x, features[stride], filters * 2 ** (4 - level), norm, upsampling, f"decoder_stride{stride}",
                           smp=smp)
    x = _decoder_level(x, pixels, filters, norm, upsampling, "decoder_stride1", concat=False, smp=smp)
    logits = blocks.classifier(x, num_classes, kernel_size=3 if smp else 1)
    return keras.Model(pixels, logits, name=name)


def _decoder_level(x, skip, filters, norm, upsampling, name, concat=True, smp=False):
    """Upsample `x` to `skip`'s size, concatenate `skip` (unless `concat` is False), then two convs; `smp`: as SMP's
    UnetDecoderBlock (torch's interpolation, `x` before `skip`, batch norm at 1e-5)."""
    if smp:
        x = blocks.torch_resize_like(x, skip, upsampling, name=f"{name}_upsample")
    elif upsampling == "transpose":
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
        x = blocks.resize_like(x, skip, "nearest", name=f"{name}_fit")
    else:
        x = blocks.resize_like(x, skip, upsampling, name=f"{name}_upsample")
    if concat:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip] if smp else [skip, x])
    return _double_conv(x, filters, norm, name, epsilon=1e-5 if smp else 1e-3)


def _double_conv(x, filters, norm, name, epsilon=1e-3):
    x = blocks.conv_bn_act(x, filters, 3, norm=norm, name=f"{name}_a", epsilon=epsilon)
    return blocks.conv_bn_act(x, filters, 3, norm=norm, name=f"{name}_b", epsilon=epsilon)
