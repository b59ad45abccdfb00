"""torchvision's segmentation models onto kseg's builders, from their state dicts (no PyTorch needed).

    model = kseg.models.convert.torchvision.lraspp_mobilenet_v3_large(kseg.models.convert.state_dict.read(f))

`lraspp_mobilenet_v3_large` becomes `kseg.models.lraspp(torchvision_compatible=True)`: the same graph,
torchvision's ImageNet normalisation inside it (kseg models take [0, 255] RGB), convolutions transposed
(OIHW -> HWIO; depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)), batch norm with torchvision's epsilon per layer
(1e-3 in MobileNetV3, 1e-5 in the head), bilinear resizes without corner alignment as in torchvision.
"""

import re

import keras
import numpy as np

from kseg.errors import KsegError
from kseg.models import registry

# torch tensors of each kind of kseg layer, in the order of the layer's weights
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
_IGNORED = ("num_batches_tracked",)


def _kernel(array, layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)
    return array.transpose(2, 3, 1, 0)


def _block_names(prefix, block, has_expand, has_se):
    """{kseg layer: torch module} of one MobileNetV3 inverted residual (torchvision's `block` Sequential)."""
    torch, names, index = f"backbone.{block + 1}.block", {}, 0
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


def lraspp_names(model: keras.Model) -> dict:
    """{kseg layer name: torchvision module name} for `kseg.models.lraspp(torchvision_compatible=True)`."""
    layer_names = {layer.name for layer in model.layers}
    blocks = sorted({int(m.group(1) or 0) for name in layer_names
                     if (m := re.fullmatch(r"expanded_conv_(?:(\d+)_)?depthwise", name))})
    names = {"conv": "backbone.0.0", "conv_bn": "backbone.0.1"}
    for block in blocks:
        prefix = f"expanded_conv_{block}_" if block else "expanded_conv_"
        names.update(_block_names(prefix, block, prefix + "expand" in layer_names,
                                  prefix + "squeeze_excite_conv" in layer_names))
    last = len(blocks) + 1
    names.update({"conv_1": f"backbone.{last}.0", "conv_1_bn": f"backbone.{last}.1",
                  "head_cbr_conv": "classifier.cbr.0", "head_cbr_bn": "classifier.cbr.1",
                  "head_scale_conv": "classifier.scale.1", "low_classifier": "classifier.low_classifier",
                  "high_classifier": "classifier.high_classifier"})
    return names


def load_into(model: keras.Model, tensors: dict, names: dict, epsilons: dict, source: str) -> None:
    """Sets every weight of `model` from `tensors` as `names` maps its layers; a KsegError naming the tensors that
    are missing, left over, or of the wrong shape, and any batch norm whose epsilon is not the source's."""
    used, problems = set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise KsegError(f"{source}: kseg layer {layer.name} has no torchvision counterpart")
        module = names[layer.name]
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        keys = [f"{module}.{part}" for part in (BN_TENSORS if is_bn else ("weight", "bias")[: len(layer.weights)])]
        missing = [key for key in keys if key not in tensors]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        arrays = [np.asarray(tensors[key], "float32") for key in keys]
        if not is_bn:
            arrays[0] = _kernel(arrays[0], layer)
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            problems.append(f"{keys[0]} {tensors[keys[0]].shape} does not fit {layer.name} {expected[0]}")
            continue
        if is_bn:
            epsilon = epsilons.get(module.split(".")[0], 1e-5)
            if not np.isclose(layer.epsilon, epsilon, rtol=1e-6, atol=0):
                problems.append(f"{layer.name} has epsilon {layer.epsilon:g}, {module} {epsilon:g}")
        layer.set_weights(arrays)
        used.update(keys)
    extra = sorted(key for key in tensors if key not in used and key.rsplit(".", 1)[-1] not in _IGNORED)
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        problems.append(f"unexpected {', '.join(extra[:5])}{more}")
    if problems:
        raise KsegError(f"{source}: " + "; ".join(problems))


def lraspp_mobilenet_v3_large(tensors: dict, input_shape: tuple = (None, None, 3),
                              source: str = "torchvision lraspp_mobilenet_v3_large") -> tuple:
    """(kseg model, builder arguments) with the weights of torchvision's `lraspp_mobilenet_v3_large` state dict.

    Example:

        tensors = kseg.models.convert.state_dict.read("lraspp_mobilenet_v3_large.pth")
        model, args = kseg.models.convert.torchvision.lraspp_mobilenet_v3_large(tensors)
    """
    key = "classifier.low_classifier.weight"
    if key not in tensors:
        raise KsegError(f"{source}: missing {key} (not an lraspp_mobilenet_v3_large state dict)")
    num_classes = int(tensors[key].shape[0])
    head = int(tensors["classifier.cbr.0.weight"].shape[0]) if "classifier.cbr.0.weight" in tensors else 128
    args: dict = {"backbone": "mobilenetv3_large", "head_filters": head, "torchvision_compatible": True}
    model = registry.get("lraspp", num_classes, input_shape=input_shape, **args)
    load_into(model, tensors, lraspp_names(model), {"backbone": 1e-3, "classifier": 1e-5}, source)
    return model, args
