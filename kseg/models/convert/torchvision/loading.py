"""A PyTorch state dict's tensors into a kseg model's layers, as a {kseg layer: torch module} table maps them.

    load_into(model, tensors, {"conv1_conv": "backbone.conv1", ...}, epsilons={"backbone": 1e-5}, source="x.pth")

Convolutions are transposed (OIHW -> HWIO; depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)); batch norm takes
weight, bias, running_mean and running_var, and must have the epsilon its torch module had. Every kseg weight
must be set (but with `mapped_only`) and every tensor used, but `num_batches_tracked` and the prefixes a converter
deliberately skips (torchvision's auxiliary heads: `ignore=("aux_classifier.",)`); anything else is a one-line
KsegError.
"""

from collections.abc import Sequence

import keras
import numpy as np

from kseg.errors import KsegError

# torch tensors of each kind of kseg layer, in the order of the layer's weights
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
_IGNORED = ("num_batches_tracked",)


def _kernel(array, layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)
    return array.transpose(2, 3, 1, 0)


def load_into(model: keras.Model, tensors: dict, names: dict, epsilons: dict, source: str,
              ignore: Sequence[str] = (), mapped_only: bool = False) -> None:
    """Sets every weight of `model` from `tensors` as `names` maps its layers; a KsegError naming the tensors that
    are missing, left over (but for names starting with one of `ignore`), or of the wrong shape, and any batch norm
    whose epsilon is not the source's (`epsilons`: by the module name's first part, else 1e-5, torch's default).
    `mapped_only`: the layers `names` leaves out keep their weights (a backbone's tensors into a whole model).

    Example:

        model = kseg.models.lraspp(21, torchvision_compatible=True)
        tensors = kseg.models.convert.state_dict.read("lraspp_mobilenet_v3_large.pth")
        load_into(model, tensors, lraspp_names(model), {"backbone": 1e-3}, source="lraspp_mobilenet_v3_large.pth")
    """
    used, problems = set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            if mapped_only:
                continue
            raise KsegError(f"{source}: kseg layer {layer.name} has no counterpart in the source model")
        module = names[layer.name]
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        keys = [f"{module}.{part}" for part in (BN_TENSORS if is_bn else ("weight", "bias")[: len(layer.weights)])]
        used.update(keys)  # a layer's tensors are named once: as missing, misfit or loaded, never also left over
        missing = [key for key in keys if key not in tensors]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        arrays = [np.asarray(tensors[key], "float32") for key in keys]
        expected = [tuple(w.shape) for w in layer.weights]
        if not is_bn and arrays[0].ndim == 4:
            arrays[0] = _kernel(arrays[0], layer)
        if [a.shape for a in arrays] != expected:
            problems.append(f"{keys[0]} {tensors[keys[0]].shape} does not fit {layer.name} {expected[0]}")
            continue
        if is_bn:
            epsilon = epsilons.get(module.split(".")[0], 1e-5)
            if not np.isclose(layer.epsilon, epsilon, rtol=1e-6, atol=0):
                problems.append(f"{layer.name} has epsilon {layer.epsilon:g}, {module} {epsilon:g}")
        layer.set_weights(arrays)
    extra = sorted(key for key in tensors if key not in used and key.rsplit(".", 1)[-1] not in _IGNORED
                   and not key.startswith(tuple(ignore)))
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        problems.append(f"unexpected {', '.join(extra[:5])}{more}")
    if problems:
        raise KsegError(f"{source}: " + "; ".join(problems))
