"""Weights from other libraries onto kseg's builders, one package per source (`torchvision`: LR-ASPP, DeepLabV3
and FCN whole, ResNet and MobileNet ImageNet classifiers as backbones; `smp`: segmentation_models_pytorch's Unet
and DeepLabV3Plus on its ResNet-34/50 and MobileNetV2 encoders; `keras_hub_presets`: keras-hub's SegFormer and
DeepLabV3+ from a local preset folder), read from files (`state_dict`: PyTorch's own format without PyTorch,
safetensors, npz; a keras-hub preset's .h5 files without keras-hub) and written as kseg model folders.

    kseg.models.convert.convert("torchvision:lraspp_mobilenet_v3_large", weights="lraspp.pth", out_dir="lraspp")
    kseg.models.from_pretrained("lraspp")  # takes [0, 255] RGB; torchvision's normalisation is inside

The command line: `kseg convert torchvision:lraspp_mobilenet_v3_large --weights lraspp.pth --out lraspp`;
`kseg convert deeplabv3_resnet50 --weights deeplabv3_resnet50_coco-cd0a2569.pth --out deeplabv3` (see `names()`);
`kseg convert smp:unet_resnet34 --weights model.safetensors --out unet` (an SMP model's `save_pretrained` folder);
`kseg convert keras_hub:segformer --weights segformer_b0_ade20k_512 --out segformer` (a keras-hub preset folder);
`kseg convert torchvision:resnet50 --weights resnet50-11ad3fa6.pth --out start --model fcn32s --num-classes 3`
(an ImageNet backbone under a fresh head: `kseg train --init start` fine-tunes it).
"""

import functools
import hashlib
import os
from collections.abc import Callable, Sequence

from kseg.errors import KsegError
from kseg.models import pretrained
from kseg.models.convert import keras_hub_presets, smp, state_dict, torchvision
from kseg.models.convert.torchvision import imagenet

# "library:model" -> (converter, kseg architecture). A whole segmentation model converts into its one architecture:
# converter(tensors, input_shape=, source=) -> (model, builder arguments). An ImageNet classifier's weights become
# a backbone: the architectures it can go under (the default first), and the converter also takes architecture=
# and num_classes= (`torchvision.imagenet.backbone_into`).
SOURCES: dict[str, tuple[Callable, str | tuple]] = {
    "torchvision:lraspp_mobilenet_v3_large": (torchvision.lraspp_mobilenet_v3_large, "lraspp"),
    "torchvision:deeplabv3_mobilenet_v3_large": (torchvision.deeplabv3_mobilenet_v3_large, "deeplabv3"),
    "torchvision:deeplabv3_resnet50": (torchvision.deeplabv3_resnet50, "deeplabv3"),
    "torchvision:deeplabv3_resnet101": (torchvision.deeplabv3_resnet101, "deeplabv3"),
    "torchvision:fcn_resnet50": (torchvision.fcn_resnet50, "fcn32s"),
    "torchvision:fcn_resnet101": (torchvision.fcn_resnet101, "fcn32s"),
    **{f"torchvision:{name}": (functools.partial(imagenet.backbone_into, name), imagenet.architectures(name))
       for name in imagenet.CLASSIFIERS},
    **{name: (functools.partial(smp.segmentation, decoder, encoder), smp.DECODERS[decoder])
       for name, (decoder, encoder) in smp.SOURCES.items()},
    "keras_hub:segformer": (keras_hub_presets.segformer, "segformer"),
    "keras_hub:deeplabv3plus": (keras_hub_presets.deeplabv3plus, "deeplabv3plus"),
}
# library -> what reads its `weights` into what its converters take: a keras-hub preset folder (`keras_hub_presets.
# read`) and the digest of it; for every other library a state dict file (`state_dict.read`) and its sha256.
def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


READERS: dict[str, tuple[Callable, Callable]] = {"keras_hub": (keras_hub_presets.read, keras_hub_presets.digest)}
STATE_DICT_READER = (state_dict.read, _sha256)


def _reader(full_name: str) -> tuple[Callable, Callable]:
    """(read, digest) of a source's weights: its library's in `READERS`, else a state dict file's."""
    return READERS.get(full_name.split(":", 1)[0], STATE_DICT_READER)
DEFAULT_CLASSES = 21  # a backbone's fresh head: torchvision's segmentation builders' default (Pascal VOC)


def names() -> list:
    return sorted(SOURCES)


def source_of(name: str) -> str:
    """The full name of a source ("lraspp_mobilenet_v3_large" is "torchvision:lraspp_mobilenet_v3_large")."""
    matches = [full for full in SOURCES if name in (full, full.split(":", 1)[1])]
    if not matches:
        raise KsegError(f"no converter for {name!r}; kseg converts {', '.join(names())}")
    return matches[0]


def convert_model(source: str, weights: str, input_shape: tuple = (None, None, 3), architecture: str | None = None,
                  num_classes: int | None = None) -> tuple:
    """(kseg model, architecture, builder arguments) with the weights of `source`'s file `weights`. A whole
    segmentation model keeps its architecture and classes; an ImageNet classifier's weights go into the backbone
    of `architecture` (default: the first `SOURCES` names) with `num_classes` classes (default 21).

    Example:

        model, architecture, args = convert_model("resnet50", "resnet50-11ad3fa6.pth", architecture="fcn32s")
    """
    full = source_of(source)
    build, into = SOURCES[full]
    label = f"{weights} ({full})"
    read = _reader(full)[0]
    if isinstance(into, str):
        if architecture not in (None, into):
            raise KsegError(f"{full} is a whole {into} model: it converts into {into}, not {architecture!r}")
        if num_classes is not None:
            raise KsegError(f"{full} has its weights' classes; kseg train --init on the converted folder changes them")
        model, args = build(read(weights), input_shape=input_shape, source=label)
        return model, into, args
    architecture = architecture or into[0]
    if architecture not in into:
        raise KsegError(f"{full}'s weights go into {' or '.join(into)}, not {architecture!r}")
    model, args = build(read(weights), architecture=architecture, input_shape=input_shape, source=label,
                        num_classes=num_classes or DEFAULT_CLASSES)
    return model, architecture, args


def convert(source: str, *, weights: str, out_dir: str, class_names: Sequence[str] | None = None,
            overwrite: bool = False, architecture: str | None = None, num_classes: int | None = None) -> str:
    """Converts the weights file of `source` (see `names()`) into a kseg model folder at `out_dir`; returns it.
    An ImageNet classifier's weights go under a fresh head of `architecture` with `num_classes` classes (default:
    one per class name, else 21); its provenance says `"converted": "backbone"`.

    Example:

        kseg.models.convert.convert("lraspp_mobilenet_v3_large", weights="lraspp.pth", out_dir="/tmp/lraspp")
    """
    backbone_only = not isinstance(SOURCES[source_of(source)][1], str)
    if backbone_only and num_classes is None and class_names:
        num_classes = len(class_names)
    model, architecture, args = convert_model(source, weights, architecture=architecture, num_classes=num_classes)
    digest = _reader(source_of(source))[1](weights)
    record = {"converted_from": source_of(source), "weights": os.path.abspath(weights), "weights_sha256": digest,
              **({"converted": "backbone"} if backbone_only else {})}
    return pretrained.save_pretrained(model, out_dir, architecture=architecture, builder_args=args,
                                      class_names=class_names, provenance=record, overwrite=overwrite)


__all__ = ["DEFAULT_CLASSES", "READERS", "SOURCES", "convert", "convert_model", "keras_hub_presets", "names", "smp",
           "source_of", "state_dict", "torchvision"]
