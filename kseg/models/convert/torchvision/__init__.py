"""torchvision's segmentation models onto kseg's builders, from their state dicts (no PyTorch needed).

    model, args = kseg.models.convert.torchvision.deeplabv3_resnet50(kseg.models.convert.state_dict.read(f))

Each becomes a kseg builder run with `torchvision_compatible=True`: the same graph (torchvision/models/
segmentation), torchvision's ImageNet normalisation inside it (kseg models take [0, 255] RGB), batch norm at
torchvision's epsilon per layer (1e-3 in MobileNetV3, 1e-5 in ResNets and the heads), bilinear resizes without
corner alignment as in torchvision:

- `lraspp_mobilenet_v3_large` -> `kseg.models.lraspp` (Howard et al. 2019, arXiv:1905.02244);
- `deeplabv3_mobilenet_v3_large` (output stride 16), `deeplabv3_resnet50`, `deeplabv3_resnet101` (output
  stride 8) -> `kseg.models.deeplabv3` (Chen et al. 2017, arXiv:1706.05587), ASPP rates (12, 24, 36);
- `fcn_resnet50`, `fcn_resnet101` -> `kseg.models.fcn32s` with a ResNet at output stride 8 and torchvision's
  FCNHead (Long et al. 2015, arXiv:1411.4038, as torchvision builds it);
- the ImageNet classifiers `resnet50`, `resnet101`, `mobilenet_v3_large`, `mobilenet_v2` -> the backbone of one
  of those under a fresh head (`imagenet.backbone_into`).

The auxiliary heads of torchvision's DeepLabV3 and FCN weights (`aux_classifier.*`, used in training only) are
skipped deliberately: the converted model is torchvision's `out`, and the tensors are not reported.
"""

import keras

from kseg.errors import KsegError
from kseg.models import registry
from kseg.models.convert.torchvision.backbone_names import (
    backbone_names,
    mobilenetv2_names,
    mobilenetv3_names,
    resnet_names,
)
from kseg.models.convert.torchvision.head_names import AUX_PREFIX, deeplabv3_names, fcn_names, lraspp_names
from kseg.models.convert.torchvision.loading import BN_TENSORS, load_into

MOBILENET_EPSILONS = {"backbone": 1e-3, "classifier": 1e-5}  # torchvision's MobileNetV3 and its heads
RESNET_EPSILONS = {"backbone": 1e-5, "classifier": 1e-5}  # torch's BatchNorm2d default throughout


def _segmentation(tensors, *, what, architecture, args, names, epsilons, input_shape, source, classifier,
                  ignore=()):
    """(model, args): `architecture` built with `args` and as many classes as `classifier`'s weight has rows,
    its weights from `tensors` as `names(model)` maps them."""
    key = f"{classifier}.weight"
    if key not in tensors:
        raise KsegError(f"{source}: missing {key} (not a state dict of {what})")
    model = registry.get(architecture, int(tensors[key].shape[0]), input_shape=input_shape, **args)
    load_into(model, tensors, names(model), epsilons, source, ignore=ignore)
    return model, args


def lraspp_mobilenet_v3_large(tensors: dict, input_shape: tuple = (None, None, 3),
                              source: str = "torchvision lraspp_mobilenet_v3_large") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `lraspp_mobilenet_v3_large` state dict.

    Example:

        tensors = kseg.models.convert.state_dict.read("lraspp_mobilenet_v3_large.pth")
        model, args = kseg.models.convert.torchvision.lraspp_mobilenet_v3_large(tensors)
    """
    head = int(tensors["classifier.cbr.0.weight"].shape[0]) if "classifier.cbr.0.weight" in tensors else 128
    args: dict = {"backbone": "mobilenetv3_large", "head_filters": head, "torchvision_compatible": True}
    return _segmentation(tensors, what="lraspp_mobilenet_v3_large", architecture="lraspp", args=args,
                         names=lraspp_names, epsilons=MOBILENET_EPSILONS, input_shape=input_shape, source=source,
                         classifier="classifier.low_classifier")


def _deeplabv3(tensors: dict, *, what: str, backbone: str, output_stride: int, input_shape: tuple,
               source: str) -> tuple:
    key = "classifier.0.convs.0.0.weight"
    args: dict = {"backbone": backbone, "output_stride": output_stride, "atrous_rates": [12, 24, 36],
                  "aspp_filters": int(tensors[key].shape[0]) if key in tensors else 256, "dropout": 0.5,
                  "torchvision_compatible": True}
    return _segmentation(tensors, what=what, architecture="deeplabv3", args=args, names=deeplabv3_names,
                         epsilons=MOBILENET_EPSILONS if backbone.startswith("mobilenet") else RESNET_EPSILONS,
                         input_shape=input_shape, source=source, classifier="classifier.4", ignore=(AUX_PREFIX,))


def deeplabv3_mobilenet_v3_large(tensors: dict, input_shape: tuple = (None, None, 3),
                                 source: str = "torchvision deeplabv3_mobilenet_v3_large") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `deeplabv3_mobilenet_v3_large` state dict:
    `kseg.models.deeplabv3(backbone="mobilenetv3_large", output_stride=16, torchvision_compatible=True)`.

    Example:

        tensors = kseg.models.convert.state_dict.read("deeplabv3_mobilenet_v3_large.pth")
        model, args = kseg.models.convert.torchvision.deeplabv3_mobilenet_v3_large(tensors)
    """
    return _deeplabv3(tensors, what="deeplabv3_mobilenet_v3_large", backbone="mobilenetv3_large", output_stride=16,
                      input_shape=input_shape, source=source)


def deeplabv3_resnet50(tensors: dict, input_shape: tuple = (None, None, 3),
                       source: str = "torchvision deeplabv3_resnet50") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `deeplabv3_resnet50` state dict:
    `kseg.models.deeplabv3(backbone="resnet50", output_stride=8, torchvision_compatible=True)`.

    Example:

        tensors = kseg.models.convert.state_dict.read("deeplabv3_resnet50.pth")
        model, args = kseg.models.convert.torchvision.deeplabv3_resnet50(tensors)
    """
    return _deeplabv3(tensors, what="deeplabv3_resnet50", backbone="resnet50", output_stride=8,
                      input_shape=input_shape, source=source)


def deeplabv3_resnet101(tensors: dict, input_shape: tuple = (None, None, 3),
                        source: str = "torchvision deeplabv3_resnet101") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `deeplabv3_resnet101` state dict, as
    `deeplabv3_resnet50` with `backbone="resnet101"`.

    Example:

        tensors = kseg.models.convert.state_dict.read("deeplabv3_resnet101.pth")
        model, args = kseg.models.convert.torchvision.deeplabv3_resnet101(tensors)
    """
    return _deeplabv3(tensors, what="deeplabv3_resnet101", backbone="resnet101", output_stride=8,
                      input_shape=input_shape, source=source)


def _fcn(tensors: dict, *, what: str, backbone: str, input_shape: tuple, source: str) -> tuple:
    key = "classifier.0.weight"
    args: dict = {"backbone": backbone, "fc_filters": int(tensors[key].shape[0]) if key in tensors else 512,
                  "dropout": 0.1, "torchvision_compatible": True}
    return _segmentation(tensors, what=what, architecture="fcn32s", args=args, names=fcn_names,
                         epsilons=RESNET_EPSILONS, input_shape=input_shape, source=source, classifier="classifier.4",
                         ignore=(AUX_PREFIX,))


def fcn_resnet50(tensors: dict, input_shape: tuple = (None, None, 3),
                 source: str = "torchvision fcn_resnet50") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `fcn_resnet50` state dict:
    `kseg.models.fcn32s(backbone="resnet50", fc_filters=512, dropout=0.1, torchvision_compatible=True)`.

    Example:

        tensors = kseg.models.convert.state_dict.read("fcn_resnet50.pth")
        model, args = kseg.models.convert.torchvision.fcn_resnet50(tensors)
    """
    return _fcn(tensors, what="fcn_resnet50", backbone="resnet50", input_shape=input_shape, source=source)


def fcn_resnet101(tensors: dict, input_shape: tuple = (None, None, 3),
                  source: str = "torchvision fcn_resnet101") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `fcn_resnet101` state dict, as
    `fcn_resnet50` with `backbone="resnet101"`.

    Example:

        tensors = kseg.models.convert.state_dict.read("fcn_resnet101.pth")
        model, args = kseg.models.convert.torchvision.fcn_resnet101(tensors)
    """
    return _fcn(tensors, what="fcn_resnet101", backbone="resnet101", input_shape=input_shape, source=source)


def names_of(model: keras.Model) -> dict:
    """{kseg layer: torchvision module} of any torchvision-compatible kseg segmentation model (LR-ASPP, DeepLabV3,
    FCN), told apart by its head's layers; what writing a kseg model back into torchvision's names needs.

    Example:

        model = kseg.models.fcn32s(21, backbone="resnet50", fc_filters=512, torchvision_compatible=True)
        names_of(model)["conv2_block1_1_conv"]  # 'backbone.layer1.0.conv1'
    """
    layers = {layer.name for layer in model.layers}
    if "head_cbr_conv" in layers:
        return lraspp_names(model)
    return deeplabv3_names(model) if "aspp_1x1_conv" in layers else fcn_names(model)


__all__ = ["BN_TENSORS", "MOBILENET_EPSILONS", "RESNET_EPSILONS", "backbone_names", "deeplabv3_mobilenet_v3_large",
           "deeplabv3_names", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_names", "fcn_resnet50",
           "fcn_resnet101", "load_into", "lraspp_mobilenet_v3_large", "lraspp_names", "mobilenetv2_names",
           "mobilenetv3_names", "names_of", "resnet_names"]
