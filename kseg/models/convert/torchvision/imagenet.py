"""torchvision's ImageNet classifiers as the backbones of kseg segmentation models: a fresh head (kseg's
initialisation) on the classifier's convolutions, the start torchvision's own segmentation models train from
(`weights_backbone=`), without PyTorch.

    tensors = kseg.models.convert.state_dict.read("resnet50-11ad3fa6.pth")
    model, args = backbone_into("resnet50", tensors, architecture="deeplabv3", num_classes=21)

`resnet50` and `resnet101` (He et al. 2016, arXiv:1512.03385; torchvision's v1.5) go into `deeplabv3` (output
stride 8, as `deeplabv3_resnet50`) or `fcn32s` (torchvision's FCN); `mobilenet_v3_large` (Howard et al. 2019,
arXiv:1905.02244) into `deeplabv3` (output stride 16) or `lraspp`; `mobilenet_v2` (Sandler et al. 2018,
arXiv:1801.04381), which no torchvision segmentation model uses, into `deeplabv3` at output stride 16 (dilated
as kseg dilates it). Every builder runs with `torchvision_compatible=True`, with the arguments torchvision's
segmentation builders use. The classification head is skipped deliberately: `fc.*` (ResNets), `classifier.*`
(MobileNets) and MobileNetV2's 1280-channel last convolution `features.18.*`, which kseg does not build.
"""

from collections.abc import Callable

import keras

from kseg.errors import KsegError
from kseg.models import registry
from kseg.models.convert.torchvision.backbone_names import mobilenetv2_names, mobilenetv3_names, resnet_names
from kseg.models.convert.torchvision.loading import load_into

# torchvision classifier -> (kseg backbone, names(model, prefix), state-dict prefix of its convolutions, prefixes
# of the classification head (skipped), batch-norm epsilons by module, {kseg architecture: builder arguments})
_RESNET_INTO = {"deeplabv3": {"output_stride": 8, "dropout": 0.5},
                "fcn32s": {"fc_filters": 512, "dropout": 0.1}}
_MOBILENET_INTO = {"deeplabv3": {"output_stride": 16, "dropout": 0.5}}
CLASSIFIERS: dict[str, tuple[str, Callable, str, tuple, dict, dict]] = {
    "resnet50": ("resnet50", resnet_names, "", ("fc.",), {}, _RESNET_INTO),
    "resnet101": ("resnet101", resnet_names, "", ("fc.",), {}, _RESNET_INTO),
    "mobilenet_v3_large": ("mobilenetv3_large", mobilenetv3_names, "features.", ("classifier.",),
                           {"features": 1e-3}, {**_MOBILENET_INTO, "lraspp": {}}),
    "mobilenet_v2": ("mobilenetv2", mobilenetv2_names, "features.", ("features.18.", "classifier."), {},
                     _MOBILENET_INTO),
}


def architectures(name: str) -> tuple:
    """The kseg architectures torchvision classifier `name`'s weights go into, the default first."""
    return tuple(CLASSIFIERS[name][-1])


def backbone_into(name: str, tensors: dict, *, architecture: str = "deeplabv3", num_classes: int = 21,
                  input_shape: tuple = (None, None, 3), source: str | None = None) -> tuple:
    """(kseg model, builder arguments): `architecture` with `num_classes` classes (21, torchvision's default, unless
    told) whose backbone has the weights of torchvision's ImageNet classifier `name` (its state dict `tensors`);
    the rest as kseg initialises it. A one-line KsegError names what does not fit.

    Example:

        tensors = kseg.models.convert.state_dict.read("mobilenet_v3_large-8738ca79.pth")
        model, args = backbone_into("mobilenet_v3_large", tensors, architecture="lraspp", num_classes=2)
    """
    source = source or f"torchvision {name}"
    if name not in CLASSIFIERS:
        raise KsegError(f"{source}: no ImageNet classifier {name!r}; kseg converts {', '.join(CLASSIFIERS)}")
    backbone, names, prefix, head, epsilons, into = CLASSIFIERS[name]
    if architecture not in into:
        raise KsegError(f"{source}: {name}'s weights go into {' or '.join(into)}, not {architecture!r}")
    args: dict = {"backbone": backbone, **into[architecture], "torchvision_compatible": True}
    model = registry.get(architecture, num_classes, input_shape=input_shape, **args)
    load_into(model, tensors, names(model, prefix), epsilons, source, ignore=head, mapped_only=True)
    return model, args


def backbone_model(model: keras.Model) -> keras.Model:
    """The backbone of a model `backbone_into` gave (or any torchvision-compatible kseg model) as a model of its own:
    pixels to the deepest features (ResNet's layer4, MobileNetV3's last 1x1 convolution, MobileNetV2's last block),
    what torchvision's `IntermediateLayerGetter` hands the segmentation heads.

    Example:

        features = backbone_model(kseg.models.deeplabv3(2, output_stride=8, torchvision_compatible=True))
        features(numpy.zeros((1, 64, 64, 3), "float32")).shape  # (1, 8, 8, 2048)
    """
    layers = {layer.name for layer in model.layers}
    last = [name for name in ("conv5_block3_out", "conv_1_act", "block_16_project_BN") if name in layers]
    if not last:
        raise KsegError(f"{model.name} has no ResNet or MobileNet backbone that kseg converts from torchvision")
    return keras.Model(model.input, model.get_layer(last[0]).output, name=f"{model.name}_backbone")
