"""Weights from other libraries onto kseg's builders, one package per source (`torchvision`: LR-ASPP, DeepLabV3
and FCN), read from files (`state_dict`: PyTorch's own format without PyTorch, safetensors, npz) and written as
kseg model folders.

    kseg.models.convert.convert("torchvision:lraspp_mobilenet_v3_large", weights="lraspp.pth", out_dir="lraspp")
    kseg.models.from_pretrained("lraspp")  # takes [0, 255] RGB; torchvision's normalisation is inside

The command line: `kseg convert torchvision:lraspp_mobilenet_v3_large --weights lraspp.pth --out lraspp`;
`kseg convert deeplabv3_resnet50 --weights deeplabv3_resnet50_coco-cd0a2569.pth --out deeplabv3` (see `names()`).
"""

import hashlib
import os

from kseg.errors import KsegError
from kseg.models import pretrained
from kseg.models.convert import state_dict, torchvision

# "library:model" -> (converter(tensors, input_shape, source) -> (model, builder arguments), kseg architecture)
SOURCES = {
    "torchvision:lraspp_mobilenet_v3_large": (torchvision.lraspp_mobilenet_v3_large, "lraspp"),
    "torchvision:deeplabv3_mobilenet_v3_large": (torchvision.deeplabv3_mobilenet_v3_large, "deeplabv3"),
    "torchvision:deeplabv3_resnet50": (torchvision.deeplabv3_resnet50, "deeplabv3"),
    "torchvision:deeplabv3_resnet101": (torchvision.deeplabv3_resnet101, "deeplabv3"),
    "torchvision:fcn_resnet50": (torchvision.fcn_resnet50, "fcn32s"),
    "torchvision:fcn_resnet101": (torchvision.fcn_resnet101, "fcn32s"),
}


def names() -> list:
    return sorted(SOURCES)


def source_of(name: str) -> str:
    """The full name of a source ("lraspp_mobilenet_v3_large" is "torchvision:lraspp_mobilenet_v3_large")."""
    matches = [full for full in SOURCES if name in (full, full.split(":", 1)[1])]
    if not matches:
        raise KsegError(f"no converter for {name!r}; kseg converts {', '.join(names())}")
    return matches[0]


def convert_model(source: str, weights: str, input_shape: tuple = (None, None, 3)) -> tuple:
    """(kseg model, architecture, builder arguments) with the weights of `source`'s file `weights`."""
    full = source_of(source)
    build, architecture = SOURCES[full]
    model, args = build(state_dict.read(weights), input_shape=input_shape, source=f"{weights} ({full})")
    return model, architecture, args


def convert(source: str, *, weights: str, out_dir: str, class_names=None, overwrite: bool = False) -> str:
    """Converts the weights file of `source` (see `names()`) into a kseg model folder at `out_dir`; returns it.

    Example:

        kseg.models.convert.convert("lraspp_mobilenet_v3_large", weights="lraspp.pth", out_dir="/tmp/lraspp")
    """
    model, architecture, args = convert_model(source, weights)
    with open(weights, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    record = {"converted_from": source_of(source), "weights": os.path.abspath(weights), "weights_sha256": digest}
    return pretrained.save_pretrained(model, out_dir, architecture=architecture, builder_args=args,
                                      class_names=class_names, provenance=record, overwrite=overwrite)


__all__ = ["SOURCES", "convert", "convert_model", "names", "source_of", "state_dict", "torchvision"]
