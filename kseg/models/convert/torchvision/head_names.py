"""{kseg layer: torchvision module} of whole torchvision segmentation models: the backbone's names
(`backbone_names`) and the head's, from torchvision/models/segmentation/{lraspp,deeplabv3,fcn}.py.

    names = deeplabv3_names(kseg.models.deeplabv3(21, output_stride=8, torchvision_compatible=True))
    names["aspp_rate24_conv"], names["head_conv"]  # ('classifier.0.convs.2.0', 'classifier.1')

torchvision's auxiliary heads (`aux_classifier.*`, an FCNHead on an earlier stage, for training only) have no
kseg counterpart: the converters skip them (`AUX_PREFIX`).
"""

import re

import keras

from kseg.models.convert.torchvision.backbone_names import backbone_names, mobilenetv3_names

AUX_PREFIX = "aux_classifier."


def lraspp_names(model: keras.Model) -> dict:
    """{kseg layer name: torchvision module name} for `kseg.models.lraspp(torchvision_compatible=True)`."""
    return {**mobilenetv3_names(model),
            "head_cbr_conv": "classifier.cbr.0", "head_cbr_bn": "classifier.cbr.1",
            "head_scale_conv": "classifier.scale.1", "low_classifier": "classifier.low_classifier",
            "high_classifier": "classifier.high_classifier"}


def deeplabv3_names(model: keras.Model) -> dict:
    """{kseg layer name: torchvision module name} for `kseg.models.deeplabv3(torchvision_compatible=True)`:
    torchvision's DeepLabHead is `classifier` = (ASPP, 3x3 conv, batch norm, ReLU, 1x1 classifier), the ASPP's
    `convs` the 1x1 branch, one branch per rate and the pooling branch (its convolution after the pool)."""
    rates = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"aspp_rate(\d+)_conv", layer.name))]
    aspp = "classifier.0"
    names = {**backbone_names(model), "aspp_1x1_conv": f"{aspp}.convs.0.0", "aspp_1x1_bn": f"{aspp}.convs.0.1"}
    for index, rate in enumerate(rates, start=1):
        names.update({f"aspp_rate{rate}_conv": f"{aspp}.convs.{index}.0",
                      f"aspp_rate{rate}_bn": f"{aspp}.convs.{index}.1"})
    pooling = f"{aspp}.convs.{len(rates) + 1}"
    names.update({"aspp_pooling_conv": f"{pooling}.1", "aspp_pooling_bn": f"{pooling}.2",
                  "aspp_projection_conv": f"{aspp}.project.0", "aspp_projection_bn": f"{aspp}.project.1",
                  "head_conv": "classifier.1", "head_bn": "classifier.2", "classifier": "classifier.4"})
    return names


def fcn_names(model: keras.Model) -> dict:
    """{kseg layer name: torchvision module name} for `kseg.models.fcn32s(torchvision_compatible=True)`:
    torchvision's FCNHead is `classifier` = (3x3 conv, batch norm, ReLU, dropout, 1x1 classifier)."""
    return {**backbone_names(model), "head_conv": "classifier.0", "head_bn": "classifier.1",
            "classifier": "classifier.4"}
