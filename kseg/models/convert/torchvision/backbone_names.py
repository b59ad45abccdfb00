"""{kseg layer: torchvision module} of the backbones kseg builds with `torchvision=True`: MobileNetV3 and MobileNetV2
(torchvision/models/mobilenetv{3,2}.py, their `features` Sequential) and ResNet v1.5 (torchvision/models/resnet.py).

    names = resnet_names(kseg.models.deeplabv3(21, output_stride=8, torchvision_compatible=True))
    names["conv3_block1_0_conv"]  # 'backbone.layer2.0.downsample.0'

`prefix` is where the backbone sits in the state dict: "backbone." in the segmentation models (the backbone
wrapped in an IntermediateLayerGetter), "" for an ImageNet ResNet, "features." for an ImageNet MobileNet.
"""

import re

import keras


def _block_names(prefix, block, torch_prefix, has_expand, has_se):
    """{kseg layer: torch module} of one MobileNetV3 inverted residual (torchvision's `block` Sequential)."""
    torch, names, index = f"{torch_prefix}{block + 1}.block", {}, 0
    if has_expand:
        names.update({prefix + "expand": f"{torch}.0.0", prefix + "expand_bn": f"{torch}.0.1"})
        index = 1
    names.update({prefix + "depthwise": f"{torch}.{index}.0", prefix + "depthwise_bn": f"{torch}.{index}.1"})
    if has_se:
        index += 1
        names.update({prefix + "squeeze_excite_conv": f"{torch}.{index}.fc1",
                      prefix + "squeeze_excite_conv_1": f"{torch}.{index}.fc2"})
    names.update({prefix + "project": f"{torch}.{index + 1}.0", prefix + "project_bn": f"{torch}.{index + 1}.1"})
    return names


def mobilenetv3_names(model: keras.Model, prefix: str = "backbone.") -> dict:
    """{kseg layer name: torchvision module name} of the MobileNetV3 (Large or Small) in `model`, whose last
    1x1 convolution (960 channels in Large) is torchvision's last `features` layer."""
    layer_names = {layer.name for layer in model.layers}
    blocks = sorted({int(m.group(1) or 0) for name in layer_names
                     if (m := re.fullmatch(r"expanded_conv_(?:(\d+)_)?depthwise", name))})
    names = {"conv": f"{prefix}0.0", "conv_bn": f"{prefix}0.1"}
    for block in blocks:
        kseg = f"expanded_conv_{block}_" if block else "expanded_conv_"
        names.update(_block_names(kseg, block, prefix, kseg + "expand" in layer_names,
                                  kseg + "squeeze_excite_conv" in layer_names))
    last = len(blocks) + 1
    names.update({"conv_1": f"{prefix}{last}.0", "conv_1_bn": f"{prefix}{last}.1"})
    return names


def mobilenetv2_names(model: keras.Model, prefix: str = "features.") -> dict:
    """{kseg layer name: torchvision module name} of the MobileNetV2 in `model`. kseg builds the 1280-channel last
    convolution (Conv_1, torchvision's last `features` layer) only for SMP's encoder (`smp=True`); without it,
    that layer has no counterpart."""
    names = {"Conv1": f"{prefix}0.0", "bn_Conv1": f"{prefix}0.1"}
    blocks = 0
    for layer in model.layers:
        if m := re.fullmatch(r"(?:expanded_conv|block_(\d+))_(expand|depthwise|project)(_BN)?", layer.name):
            block, part, bn = int(m.group(1) or 0), m.group(2), int(bool(m.group(3)))
            # torchvision's `conv`: [expand conv-BN-ReLU6,] depthwise conv-BN-ReLU6, project conv, project BN
            index = {"expand": 0, "depthwise": int(block > 0), "project": 1 + int(block > 0)}[part]
            torch = f"{prefix}{block + 1}.conv"
            names[layer.name] = f"{torch}.{index + bn}" if part == "project" else f"{torch}.{index}.{bn}"
            blocks = max(blocks, block + 1)
    names.update({"Conv_1": f"{prefix}{blocks + 1}.0", "Conv_1_bn": f"{prefix}{blocks + 1}.1"})
    return names


# the layers of a kseg bottleneck (conv{stage}_block{block}_{part}_{kind}) in a torchvision Bottleneck
_BOTTLENECK = {("0", "conv"): "downsample.0", ("0", "bn"): "downsample.1", ("1", "conv"): "conv1",
               ("1", "bn"): "bn1", ("2", "conv"): "conv2", ("2", "bn"): "bn2", ("3", "conv"): "conv3",
               ("3", "bn"): "bn3"}


def resnet_names(model: keras.Model, prefix: str = "backbone.") -> dict:
    """{kseg layer name: torchvision module name} of the ResNet in `model` (stage s of kseg, keras.applications'
    conv{s}, is torchvision's layer{s - 1}; block b its module b - 1)."""
    names = {"conv1_conv": f"{prefix}conv1", "conv1_bn": f"{prefix}bn1"}
    for layer in model.layers:
        if m := re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer.name):
            stage, block, part, kind = m.groups()
            names[layer.name] = f"{prefix}layer{int(stage) - 1}.{int(block) - 1}.{_BOTTLENECK[part, kind]}"
    return names


def backbone_names(model: keras.Model, prefix: str = "backbone.") -> dict:
    """The names of `model`'s backbone, a ResNet's, a MobileNetV2's or a MobileNetV3's (whichever `model` has)."""
    layers = {layer.name for layer in model.layers}
    if "conv1_conv" in layers:
        return resnet_names(model, prefix)
    return mobilenetv2_names(model, prefix) if "Conv1" in layers else mobilenetv3_names(model, prefix)
