"""segmentation_models_pytorch's (SMP 0.6.0) `Unet` and `DeepLabV3Plus` onto kseg's builders, from their state
dicts (no PyTorch needed): `torch.save(model.state_dict(), f)`, or the `model.safetensors` of `save_pretrained`.

    tensors = kseg.models.convert.state_dict.read("unet_resnet34.pth")
    model, args = kseg.models.convert.smp.segmentation("Unet", "resnet34", tensors)

One source per decoder and encoder, `smp:{unet,deeplabv3plus}_{resnet34,resnet50,mobilenet_v2}` (`SOURCES`), as
torchvision's sources are named: SMP's own encoders, whose ResNets and MobileNetV2 are torchvision's
(encoders/resnet.py, encoders/mobilenet.py; Ronneberger et al. 2015, arXiv:1505.04597; Chen et al. 2018,
arXiv:1802.02611). Each becomes a kseg builder run with `smp_compatible=True`, the same graph with SMP's ImageNet
normalisation inside it (SMP's models take normalised tensors, kseg's [0, 255] RGB):

- `smp:unet_*` -> `kseg.models.unet(backbone=..., filters=..., upsampling="nearest", smp_compatible=True)`,
  `filters` the last of SMP's `decoder_channels` (16 by default; kseg doubles it per level as SMP's default does),
  and `norm="none"` where the decoder's convolutions have biases (SMP's `decoder_use_norm=False`);
- `smp:deeplabv3plus_*` -> `kseg.models.deeplabv3plus(backbone=..., output_stride=16, atrous_rates=[12, 24, 36],
  aspp_filters=..., decoder_filters=..., dropout=0.5, smp_compatible=True)`.

The state dict holds no interpolation mode, output stride nor atrous rates: the converters take SMP's defaults
(`decoder_interpolation="nearest"`, `encoder_output_stride=16`, `decoder_atrous_rates=(12, 24, 36)`). A model
trained with others converts without error but computes otherwise: build kseg's model with the matching
arguments and `load_into` it with these names (`unet_names`, `deeplabv3plus_names`). The converted model gives
logits, as SMP's default `activation=None` does (an activation is no weight). SMP's auxiliary
classification head (`aux_params`, `classification_head.*`) is skipped deliberately: the converted model is
SMP's mask output. A state dict of another decoder or encoder than the source's is refused naming the one it
holds (`identify`); anything else that does not fit (`decoder_attention_type="scse"`, other `decoder_channels`,
`in_channels`, `encoder_depth`) is a one-line KsegError naming the tensors.
"""

import re

import keras

from kseg.errors import KsegError
from kseg.models import registry
from kseg.models.convert.torchvision.backbone_names import mobilenetv2_names, resnet_names
from kseg.models.convert.torchvision.loading import load_into

# SMP encoder name -> kseg backbone (built with smp=True)
ENCODERS = {"resnet34": "resnet34", "resnet50": "resnet50", "mobilenet_v2": "mobilenetv2"}
# SMP decoder class -> kseg architecture
DECODERS = {"Unet": "unet", "DeepLabV3Plus": "deeplabv3plus"}
HEAD = "segmentation_head.0"  # SMP's SegmentationHead: its convolution, then (DeepLabV3+) an upsampling
SKIPPED = ("classification_head.",)  # SMP's auxiliary head (aux_params), for training only


def encoder_names(model: keras.Model, prefix: str = "encoder.") -> dict:
    """{kseg layer: SMP module} of the encoder in `model` (a ResNet's or a MobileNetV2's): SMP's encoders are
    torchvision's modules under `encoder.`, a MobileNetV2's `features` included."""
    if "conv1_conv" in {layer.name for layer in model.layers}:
        return resnet_names(model, prefix)
    return mobilenetv2_names(model, f"{prefix}features.")


def unet_names(model: keras.Model) -> dict:
    """{kseg layer: SMP module} for `kseg.models.unet(smp_compatible=True)`: SMP's UnetDecoder has one block per
    stride from 16 to 1 (`decoder.blocks.{i}`), each two Conv2dReLU (conv, norm, ReLU)."""
    names = encoder_names(model)
    for block, stride in enumerate((16, 8, 4, 2, 1)):
        for kseg_conv, smp_conv in (("a", "conv1"), ("b", "conv2")):
            names.update({f"decoder_stride{stride}_{kseg_conv}_conv": f"decoder.blocks.{block}.{smp_conv}.0",
                          f"decoder_stride{stride}_{kseg_conv}_bn": f"decoder.blocks.{block}.{smp_conv}.1"})
    return {**names, "classifier": HEAD}


def _separable(kseg, smp, bn):
    """A separable convolution (SMP's SeparableConv2d `smp`: depthwise .0, pointwise .1) and its batch norm `bn`."""
    return {f"{kseg}_depthwise": f"{smp}.0", f"{kseg}_pointwise_conv": f"{smp}.1", f"{kseg}_pointwise_bn": bn}


def deeplabv3plus_names(model: keras.Model) -> dict:
    """{kseg layer: SMP module} for `kseg.models.deeplabv3plus(smp_compatible=True)`: SMP's DeepLabV3PlusDecoder
    is `aspp` = (ASPP, SeparableConv2d, BN, ReLU), the ASPP's `convs` the 1x1 branch, one separable branch per
    rate and the pooling branch (its convolution after the pool), then `block1` (the stride-4 projection) and
    `block2` (SeparableConv2d, BN, ReLU)."""
    aspp = "decoder.aspp.0"
    rates = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"aspp_rate(\d+)_depthwise", layer.name))]
    names = {**encoder_names(model), "aspp_1x1_conv": f"{aspp}.convs.0.0", "aspp_1x1_bn": f"{aspp}.convs.0.1"}
    for index, rate in enumerate(rates, start=1):
        names.update(_separable(f"aspp_rate{rate}", f"{aspp}.convs.{index}.0", f"{aspp}.convs.{index}.1"))
    pooling = f"{aspp}.convs.{len(rates) + 1}"
    names.update({"aspp_pooling_conv": f"{pooling}.1", "aspp_pooling_bn": f"{pooling}.2",
                  "aspp_projection_conv": f"{aspp}.project.0", "aspp_projection_bn": f"{aspp}.project.1",
                  **_separable("aspp_separable", "decoder.aspp.1", "decoder.aspp.2"),
                  "decoder_low_level_conv": "decoder.block1.0", "decoder_low_level_bn": "decoder.block1.1",
                  **_separable("decoder_conv1", "decoder.block2.0", "decoder.block2.1"), "classifier": HEAD})
    return names


def names_of(model: keras.Model) -> dict:
    """{kseg layer: SMP module} of any SMP-compatible kseg model (Unet or DeepLabV3+, told apart by its layers);
    what writing a kseg model back into SMP's names needs.

    Example:

        model = kseg.models.unet(2, backbone="resnet34", filters=16, upsampling="nearest", smp_compatible=True)
        names_of(model)["decoder_stride16_a_conv"]  # 'decoder.blocks.0.conv1.0'
    """
    layers = {layer.name for layer in model.layers}
    return deeplabv3plus_names(model) if "aspp_1x1_conv" in layers else unet_names(model)


def builder_arguments(decoder: str, encoder: str, tensors: dict) -> dict:
    """The kseg builder arguments of SMP's `decoder` on `encoder` whose state dict is `tensors` (widths read from
    the tensors' shapes, the rest SMP's defaults)."""
    args: dict = {"backbone": ENCODERS[encoder]}
    width = int(tensors[f"{HEAD}.weight"].shape[1])  # the head's input channels: the decoder's last width
    if decoder == "Unet":  # decoder_use_norm=False: convolutions with biases, no batch norm
        norm = {"norm": "none"} if "decoder.blocks.0.conv1.0.bias" in tensors else {}
        return {**args, "filters": width, "upsampling": "nearest", **norm, "smp_compatible": True}
    key = "decoder.aspp.0.convs.0.0.weight"
    return {**args, "output_stride": 16, "atrous_rates": [12, 24, 36],
            "aspp_filters": int(tensors[key].shape[0]) if key in tensors else width, "decoder_filters": width,
            "dropout": 0.5, "smp_compatible": True}


def identify(tensors: dict) -> tuple:
    """(SMP decoder, SMP encoder) whose state dict `tensors` looks like, from its tensor names (None for either
    where it is none that kseg tells apart): a MobileNetV2's 19 `features`, a ResNet's blocks per stage.

    Example:

        identify(kseg.models.convert.state_dict.read("unet_resnet34.pth"))  # ('Unet', 'resnet34')
    """
    decoder = ("DeepLabV3Plus" if "decoder.aspp.0.convs.0.0.weight" in tensors
               else "Unet" if "decoder.blocks.0.conv1.0.weight" in tensors else None)
    if "encoder.features.18.0.weight" in tensors:
        return decoder, "mobilenet_v2"
    blocks = 1 + max((int(m.group(1)) for key in tensors if (m := re.match(r"encoder\.layer3\.(\d+)\.", key))),
                     default=-1)
    bottleneck = "encoder.layer1.0.conv3.weight" in tensors
    resnets = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50", (23, True): "resnet101"}
    return decoder, resnets.get((blocks, bottleneck))


def segmentation(decoder: str, encoder: str, tensors: dict, input_shape: tuple = (None, None, 3),
                 source: str | None = None) -> tuple:
    """(kseg model, builder arguments) with the weights of the state dict `tensors` of SMP's `decoder` ("Unet" or
    "DeepLabV3Plus") on its encoder `encoder` ("resnet34", "resnet50" or "mobilenet_v2"), as many classes as
    SMP's segmentation head has; a one-line KsegError names the tensors that are missing, left over or misshapen.

    Example:

        tensors = kseg.models.convert.state_dict.read("deeplabv3plus_mobilenet_v2.safetensors")
        model, args = kseg.models.convert.smp.segmentation("DeepLabV3Plus", "mobilenet_v2", tensors)
    """
    source = source or f"smp {decoder} {encoder}"
    if decoder not in DECODERS or encoder not in ENCODERS:
        raise KsegError(f"{source}: kseg converts SMP's {' and '.join(DECODERS)} on {', '.join(ENCODERS)}, "
                        f"not {decoder} on {encoder}")
    key = f"{HEAD}.weight"
    if key not in tensors or len(tensors[key].shape) != 4:
        raise KsegError(f"{source}: missing {key} (not a state dict of SMP's {decoder})")
    found = identify(tensors)
    if None not in found and found != (decoder, encoder):
        known = f": convert it as smp:{DECODERS[found[0]]}_{found[1]}" if found[1] in ENCODERS else ""
        raise KsegError(f"{source}: holds SMP's {found[0]} on {found[1]}, not {decoder} on {encoder}{known}")
    args = builder_arguments(decoder, encoder, tensors)
    architecture = DECODERS[decoder]
    model = registry.get(architecture, int(tensors[key].shape[0]), input_shape=input_shape, **args)
    load_into(model, tensors, names_of(model), {}, source, ignore=SKIPPED)
    return model, args


# "smp:{decoder}_{encoder}" source name -> (SMP decoder, SMP encoder)
SOURCES = {f"smp:{DECODERS[decoder]}_{encoder}": (decoder, encoder) for decoder in DECODERS for encoder in ENCODERS}

__all__ = ["DECODERS", "ENCODERS", "SOURCES", "builder_arguments", "deeplabv3plus_names", "encoder_names",
           "identify", "names_of", "segmentation", "unet_names"]
