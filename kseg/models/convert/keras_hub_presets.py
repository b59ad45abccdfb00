"""keras-hub presets (keras-hub 0.32) onto kseg's builders, read from a LOCAL preset folder without keras-hub: what
`keras_hub.models.X.from_preset(...)` downloads and `model.save_to_preset(folder)` writes (config.json: the
backbone; model.weights.h5: its weights; task.json and task.weights.h5: the segmentation head; preprocessor.json
or image_converter.json: the input scaling).

    preset = kseg.models.convert.keras_hub_presets.read("segformer_b0_ade20k_512")
    model, args = kseg.models.convert.keras_hub_presets.segformer(preset)

Two sources (`SOURCES`), each a kseg builder run with `keras_hub_compatible=True`, the preset's ImageConverter
`scale` and `offset` inside the graph as `pixel_scale` and `pixel_offset` (kseg models take [0, 255] RGB; the
converter's resize is no part of the model, kseg's deployment resizes):

- `keras_hub:segformer` (keras_hub/src/models/segformer/, mit/): `SegFormerImageSegmenter` on `MiTBackbone`, its
  widths, depths and heads whatever they are (B0 to B5; tested on B0 and a tiny MiT) -> `kseg.models.segformer(
  variant=..., keras_hub_compatible=True)` (`segformer_names`);
- `keras_hub:deeplabv3plus` (keras_hub/src/models/deeplab_v3/, resnet/resnet_backbone.py): `DeepLabV3ImageSegmenter`
  on a `ResNetBackbone` (v1, "basic_block" or "bottleneck_block": torchvision's graph; `deeplab_v3_plus_resnet50_
  pascalvoc` is ResNet-50 v1, its 39,190,656 backbone parameters say so) with a low-level feature ->
  `kseg.models.deeplabv3plus(backbone=..., keras_hub_compatible=True)` (`deeplabv3plus_names`).

Weights are found by their paths in the .h5 files, which Keras's saving names from the model's structure (a
layer's class in snake case, numbered in build order: `hierarchical_transformer_encoder_3`); where that order is
not the model's, by shape (the decoder's per-stage Dense layers by their input width). A preset of another kind,
without its head, or with weights missing, left over or misshapen is a one-line KsegError naming the folder.
"""

import dataclasses
import hashlib
import json
import os

import h5py
import keras
import numpy as np

from kseg.errors import KsegError
from kseg.models import registry
from kseg.models.convert import keras_hub_deeplab
from kseg.models.segformer import VARIANTS

MODEL_WEIGHTS, TASK_WEIGHTS = "model.weights.h5", "task.weights.h5"
SKIPPED = ("optimizer/",)  # a task file's optimizer state: no part of the model


@dataclasses.dataclass(frozen=True)
class Preset:
    """A keras-hub preset folder as read: the backbone's and the task's configs (their "config" dicts), the image
    converter's (`{}` where none is saved), and every weight by file and path ("model/layers/dense/vars/0")."""

    folder: str
    backbone_class: str
    backbone: dict
    task: dict
    converter: dict
    weights: dict


def _json(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise KsegError(f"{folder}: cannot read {name} ({error})") from error


def _h5(folder, name, prefix, found):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise KsegError(f"{folder}: no {name} (a keras-hub preset folder has its weights there)")
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda key, item: found.__setitem__(f"{prefix}/{key}", np.asarray(item))
                         if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise KsegError(f"{folder}: cannot read {name} ({error})") from error


def read(folder: str) -> Preset:
    """A keras-hub preset folder (config.json, model.weights.h5, task.json, task.weights.h5, preprocessor.json);
    a one-line KsegError naming the folder when it is none, or has no segmentation head.

    Example:

        preset = read("deeplab_v3_plus_resnet50_pascalvoc")
        preset.backbone_class, preset.task["num_classes"]  # ('DeepLabV3Backbone', 21)
    """
    if not os.path.isdir(folder):
        raise KsegError(f"{folder}: not a folder (a keras-hub preset is one: save_to_preset writes it)")
    config = _json(folder, "config.json")
    if not isinstance(config, dict) or "config" not in config:
        raise KsegError(f"{folder}: no keras-hub config.json (not a keras-hub preset folder)")
    task = _json(folder, "task.json")
    if not isinstance(task, dict) or "num_classes" not in task.get("config", {}):
        raise KsegError(f"{folder}: a keras-hub {config.get('class_name')} without a segmentation head (task.json "
                        "and task.weights.h5): save the ImageSegmenter's preset, not its backbone's")
    preprocessor = _json(folder, "preprocessor.json") or {}
    converter = preprocessor.get("config", {}).get("image_converter") or _json(folder, "image_converter.json") or {}
    weights: dict = {}
    _h5(folder, MODEL_WEIGHTS, "model", weights)
    _h5(folder, TASK_WEIGHTS, "task", weights)
    return Preset(folder, config.get("class_name", ""), config["config"], task["config"],
                  converter.get("config", {}), weights)


def rescaling(preset: Preset) -> dict:
    """{"pixel_scale": ..., "pixel_offset": ...} of the preset's ImageConverter (keras_hub/src/layers/preprocessing/
    image_converter.py: x * scale + offset, the old `mean` / `variance` arguments as it converts them); only the
    ones it sets."""
    config = dict(preset.converter)
    scale, offset = config.get("scale"), config.get("offset")
    if "mean" in config and "variance" in config:
        std = [float(v) ** 0.5 for v in config["variance"]]
        scale = [(1.0 if scale is None else float(scale)) / s for s in std]
        offset = [-float(m) / s for m, s in zip(config["mean"], std)]
    return {key: value for key, value in (("pixel_scale", scale), ("pixel_offset", offset)) if value is not None}


def expect(preset: Preset, backbone_class: str, source: str) -> None:
    """A KsegError naming the folder when the preset's backbone is not `backbone_class`."""
    if preset.backbone_class != backbone_class:
        other = {cls: name for name, (_, cls) in SOURCES.items()}.get(preset.backbone_class)
        hint = f": convert it as {other}" if other else ""
        raise KsegError(f"{preset.folder}: a keras-hub {preset.backbone_class or 'model'} preset, not the "
                        f"{backbone_class} that {source} converts{hint}")


def load_into(model: keras.Model, preset: Preset, names: dict) -> None:
    """Sets every weight of `model` from the preset: `names` maps each kseg layer to the .h5 group of its
    counterpart ("model/layers/dense"), whose `vars/0`, `vars/1`, ... are the layer's weights in order (a Dense
    kernel (in, out) goes into a 1x1 convolution as (1, 1, in, out)). A one-line KsegError names the folder and
    the weights that are missing, misshapen or left over (but a task file's optimizer state, `SKIPPED`)."""
    used, problems = set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise KsegError(f"{preset.folder}: kseg layer {layer.name} has no counterpart in the preset")
        keys = [f"{names[layer.name]}/vars/{i}" for i in range(len(layer.weights))]
        used.update(keys)
        missing = [key for key in keys if key not in preset.weights]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        arrays = [preset.weights[key].astype("float32") for key in keys]
        arrays = [a.reshape(w.shape) if a.ndim == 2 and len(w.shape) == 4 else a for a, w in zip(arrays, layer.weights)]
        if [a.shape for a in arrays] != [tuple(w.shape) for w in layer.weights]:
            problems.append(f"{keys[0]} {preset.weights[keys[0]].shape} does not fit {layer.name} "
                            f"{tuple(layer.weights[0].shape)}")
            continue
        layer.set_weights(arrays)
    extra = sorted(key for key in preset.weights if key not in used and not key.split("/", 1)[1].startswith(SKIPPED))
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        problems.append(f"unexpected {', '.join(extra[:3])}{more}")
    if problems:
        raise KsegError(f"{preset.folder}: " + "; ".join(problems))


def numbered(name: str, index: int) -> str:
    """Keras's name for the `index`-th object of class `name` in one container: name, name_1, name_2, ..."""
    return f"{name}_{index}" if index else name


def group(preset: Preset, suffix: str) -> str:
    """The one .h5 group whose path ends with `suffix` ("overlapping_patching_and_embedding"), less it: where a
    nested model's layers sit ("model/layers/functional/layers/")."""
    found = {key[: key.index(suffix)] for key in preset.weights if f"/{suffix}/" in f"/{key}"}
    if len(found) != 1:
        raise KsegError(f"{preset.folder}: {'no' if not found else 'more than one'} {suffix} in its weights "
                        "(not the keras-hub model this converter knows)")
    return found.pop()


def _segformer_arguments(preset: Preset) -> dict:
    encoder = preset.backbone.get("image_encoder", {}).get("config", {})
    if (encoder.get("num_layers") != 4 or list(encoder.get("layerwise_patch_sizes", [])) != [7, 3, 3, 3]
            or list(encoder.get("layerwise_strides", [])) != [4, 2, 2, 2]):
        raise KsegError(f"{preset.folder}: kseg's SegFormer has MiT's 4 stages, patches 7, 3, 3, 3 and strides 4, 2, "
                        f"2, 2; this MiT has {encoder.get('num_layers')} stages, patches "
                        f"{encoder.get('layerwise_patch_sizes')} and strides {encoder.get('layerwise_strides')}")
    widths, depths = list(encoder["hidden_dims"]), list(encoder["layerwise_depths"])
    heads, decoder_width = list(encoder["layerwise_num_heads"]), int(preset.backbone["projection_filters"])
    args: dict = {"widths": widths, "depths": depths, "heads": heads, "decoder_width": decoder_width}
    for variant, config in VARIANTS.items():
        if args == {key: list(value) if key != "decoder_width" else value for key, value in config.items()}:
            args = {"variant": variant}
    return {**args, "sr_ratios": list(encoder["layerwise_sr_ratios"]),
            "drop_path_rate": float(encoder.get("max_drop_path_rate", 0.1)), "keras_hub_compatible": True,
            **rescaling(preset)}


def segformer_names(model: keras.Model, preset: Preset) -> dict:
    """{kseg layer: .h5 group} for `kseg.models.segformer(keras_hub_compatible=True)` and a SegFormer preset:
    keras-hub's MiT (`OverlappingPatchingAndEmbedding`, `HierarchicalTransformerEncoder` numbered over all
    stages, a LayerNormalization per stage) inside the backbone's feature extractor, its decoder's Dense per stage
    (told apart by input width), `linear_fuse` (a Sequential: Conv2D, BatchNormalization), the task's Conv2D."""
    encoder = group(preset, "overlapping_patching_and_embedding")
    layers = {layer.name: layer for layer in model.layers}
    names, block = {}, 0
    for stage in range(4):
        kseg, embed = f"stage{stage + 1}", encoder + numbered("overlapping_patching_and_embedding", stage)
        names.update({f"{kseg}_patch_embed_conv": f"{embed}/proj", f"{kseg}_patch_embed_norm": f"{embed}/norm",
                      f"{kseg}_norm": encoder + numbered("layer_normalization", stage)})
        index = 1
        while f"{kseg}_block{index}_norm1" in layers:
            torch, ours = encoder + numbered("hierarchical_transformer_encoder", block), f"{kseg}_block{index}"
            names.update({f"{ours}_{k}": f"{torch}/{h}" for k, h in (
                ("norm1", "norm1"), ("attn_query", "attn/q"), ("attn_key", "attn/k"), ("attn_value", "attn/v"),
                ("attn_output", "attn/proj"), ("attn_sr", "attn/sr"), ("attn_sr_norm", "attn/norm"),
                ("norm2", "norm2"), ("ffn_fc1", "mlp/fc1"), ("ffn_dwconv", "mlp/dwconv"), ("ffn_fc2", "mlp/fc2"))})
            index, block = index + 1, block + 1
    dense = group(preset, "dense")
    by_width = {preset.weights[key].shape[0]: key[: -len("/vars/0")] for key in preset.weights
                if key.startswith(dense) and key.endswith("/vars/0") and "/layers/" not in key[len(dense):]
                and preset.weights[key].ndim == 2}
    for stage in range(4):
        width = layers[f"stage{stage + 1}_norm"].weights[0].shape[0]
        names[f"decoder_linear_c{stage + 1}"] = by_width.get(width, f"{dense}dense (input width {width})")
    fuse = group(preset, "sequential")
    names.update({"decoder_fuse_conv": f"{fuse}sequential/layers/conv2d", "classifier": "task/layers/conv2d",
                  "decoder_fuse_bn": f"{fuse}sequential/layers/batch_normalization"})
    return names


def segformer(preset: Preset, input_shape: tuple = (None, None, 3), source: str | None = None) -> tuple:
    """(kseg model, builder arguments) of a keras-hub SegFormer preset (`read`): `kseg.models.segformer` with
    `keras_hub_compatible=True`, the preset's MiT widths, depths, heads and reduction ratios, its decoder width,
    its classes and input scaling.

    Example:

        model, args = segformer(read("segformer_b0_ade20k_512"))
        args  # {'variant': 'b0', 'sr_ratios': [8, 4, 2, 1], ..., 'keras_hub_compatible': True, ...}
    """
    expect(preset, "SegFormerBackbone", source or "keras_hub:segformer")
    args = _segformer_arguments(preset)
    model = registry.get("segformer", int(preset.task["num_classes"]), input_shape=input_shape, **args)
    load_into(model, preset, segformer_names(model, preset))
    return model, args


def deeplabv3plus(preset: Preset, input_shape: tuple = (None, None, 3), source: str | None = None) -> tuple:
    """(kseg model, builder arguments) of a keras-hub DeepLabV3+ preset (`read`) on a ResNet: `kseg.models.
    deeplabv3plus(keras_hub_compatible=True)` (`keras_hub_deeplab.builder_arguments`, `deeplabv3plus_names`).

    Example:

        model, args = deeplabv3plus(read("deeplab_v3_plus_resnet50_pascalvoc"))
        args["backbone"], args["output_stride"]  # ('resnet50', 32)
    """
    expect(preset, "DeepLabV3Backbone", source or "keras_hub:deeplabv3plus")
    args = {**keras_hub_deeplab.builder_arguments(preset.folder, preset.backbone, preset.task), **rescaling(preset)}
    model = registry.get("deeplabv3plus", int(preset.task["num_classes"]), input_shape=input_shape, **args)
    try:
        names = keras_hub_deeplab.deeplabv3plus_names(model, preset.weights, args["atrous_rates"])
    except KsegError as error:
        raise KsegError(f"{preset.folder}: {error}") from None
    head = "task/layers/conv2d/vars/"  # keras-hub's head has no bias (use_bias=False): kseg's gets zeros
    if f"{head}0" in preset.weights and f"{head}1" not in preset.weights:
        zeros = np.zeros(preset.weights[f"{head}0"].shape[-1:], "float32")
        preset = dataclasses.replace(preset, weights={**preset.weights, f"{head}1": zeros})
    load_into(model, preset, names)
    return model, args


def digest(folder: str) -> str:
    """sha256 over a preset folder's files (their names and bytes, in name order): the provenance of a conversion."""
    sha = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            sha.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                sha.update(hashlib.sha256(f.read()).digest())
    return sha.hexdigest()


# "keras_hub:..." source name -> (converter, the keras-hub backbone class it converts)
SOURCES = {"keras_hub:segformer": (segformer, "SegFormerBackbone"),
           "keras_hub:deeplabv3plus": (deeplabv3plus, "DeepLabV3Backbone")}

__all__ = ["MODEL_WEIGHTS", "SKIPPED", "SOURCES", "TASK_WEIGHTS", "Preset", "deeplabv3plus", "digest", "expect",
           "group", "load_into", "numbered", "read", "rescaling", "segformer", "segformer_names"]
