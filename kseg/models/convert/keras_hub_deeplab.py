"""keras-hub's DeepLabV3+ (keras-hub 0.32: keras_hub/src/models/deeplab_v3/deeplab_v3_backbone.py,
deeplab_v3_layers.py, deeplab_v3_segmenter.py) on its ResNet (resnet/resnet_backbone.py) as kseg's
`deeplabv3plus(keras_hub_compatible=True)`: the builder arguments a preset's configs give, and where each kseg
layer's weights sit in its .h5 files.

    args = builder_arguments("deeplab_v3_plus_resnet50_pascalvoc", backbone_config, task_config)
    args["backbone"], args["atrous_rates"]  # ('resnet50', [6, 12, 18])

keras-hub's ResNetBackbone (v1, `use_pre_activation=False`) is torchvision's ResNet (v1.5: the stride in the 3x3
convolution, padded on every side; no biases; batch norm at 1e-5), undilated: kseg's ResNet built with
`torchvision=True` at output stride 32. Its layers are saved by class and build order (`conv2d_7`), which is the
order Keras lists a functional model's layers in; kseg's ResNet has the same graph, so listing kseg's backbone
(its four stage outputs, as keras-hub's feature pyramid model has) in Keras's order pairs them.
"""

import keras

from kseg.errors import KsegError

# (block_type, blocks per stage) of keras-hub's ResNetBackbone -> kseg backbone (built with torchvision=True)
RESNETS = {("basic_block", (3, 4, 6, 3)): "resnet34", ("bottleneck_block", (3, 4, 6, 3)): "resnet50",
           ("bottleneck_block", (3, 4, 23, 3)): "resnet101"}
LOW_LEVEL = {"P2": 4, "P3": 8, "P4": 16}  # keras-hub's low_level_feature_key -> kseg's low_level_stride
ASPP_FILTERS = DECODER_FILTERS = 256  # keras-hub's SpatialPyramidPooling num_channels, segmentation_head_conv filters


def _backbone(folder, encoder):
    config = encoder.get("config", {})
    blocks = tuple(config.get("stackwise_num_blocks", ()))
    name = RESNETS.get((config.get("block_type"), blocks))
    if (encoder.get("class_name") != "ResNetBackbone" or name is None or config.get("use_pre_activation")
            or list(config.get("input_conv_filters", [])) != [64] or list(config.get("input_conv_kernel_sizes", []))
            != [7] or list(config.get("stackwise_num_filters", [])) != [64, 128, 256, 512]
            or list(config.get("stackwise_num_strides", [])) != [1, 2, 2, 2]):
        found = f"{encoder.get('class_name')} {config.get('block_type')} {list(blocks)}"
        raise KsegError(f"{folder}: kseg converts keras-hub's DeepLabV3+ on its ResNet-34/50/101 v1 "
                        f"(ResNetBackbone, 64-channel 7x7 stem, no pre-activation), not on {found}")
    return name


def builder_arguments(folder: str, backbone: dict, task: dict) -> dict:
    """The `kseg.models.deeplabv3plus` arguments of a keras-hub `DeepLabV3Backbone` config `backbone` (config.json's
    "config"): its ResNet, pyramid pooling on P5 (stride 32, keras-hub's ResNet does not dilate) at its
    `dilation_rates`, the low-level feature `low_level_feature_key` projected to `projection_filters`. A one-line
    KsegError naming `folder` for what kseg's graph does not build (DeepLabV3 without the low-level feature, another
    pooling level). `task` (task.json's "config") is read for nothing but its activation, which the converted model
    leaves out (it gives logits; keras-hub's default activation is None).

    Example:

        builder_arguments("preset", json.load(open("preset/config.json"))["config"], {})["output_stride"]  # 32
    """
    name = _backbone(folder, backbone.get("image_encoder", {}))
    key, low = backbone.get("spatial_pyramid_pooling_key"), backbone.get("low_level_feature_key")
    if key != "P5" or low not in LOW_LEVEL:
        raise KsegError(f"{folder}: kseg converts keras-hub's DeepLabV3+ with spatial_pyramid_pooling_key P5 and a "
                        f"low_level_feature_key ({', '.join(LOW_LEVEL)}), not {key} and {low}")
    upsampling = backbone.get("upsampling_size")
    upsampling = upsampling[0] if isinstance(upsampling, (list, tuple)) else upsampling
    if upsampling != 32 // LOW_LEVEL[low]:
        raise KsegError(f"{folder}: upsampling_size {backbone.get('upsampling_size')} does not take P5 to {low}")
    return {"backbone": name, "output_stride": 32, "low_level_stride": LOW_LEVEL[low],
            "atrous_rates": [int(rate) for rate in backbone.get("dilation_rates", [])],
            "aspp_filters": ASPP_FILTERS, "decoder_filters": DECODER_FILTERS,
            "low_level_filters": int(backbone.get("projection_filters", 48)), "dropout": 0.0,
            "keras_hub_compatible": True}


def backbone_names(model: keras.Model, prefix: str) -> dict:
    """{kseg layer: .h5 group} of the ResNet in `model`: keras-hub's feature pyramid model (under `prefix`, e.g.
    "model/layers/functional/layers/") numbers its Conv2D and BatchNormalization layers in Keras's order of its
    layers, which for kseg's ResNet of the same graph, to its stage outputs, is the same."""
    stages = [max((layer for layer in model.layers if layer.name.startswith(f"conv{stage}_block")
                   and layer.name.endswith("_out")), key=lambda layer: int(layer.name.split("_")[1][5:]))
              for stage in (2, 3, 4, 5)]
    pyramid = keras.Model(model.inputs, [layer.output for layer in stages])
    names, counts = {}, {"conv2d": 0, "batch_normalization": 0}
    for layer in pyramid.layers:
        kind = ("batch_normalization" if isinstance(layer, keras.layers.BatchNormalization)
                else "conv2d" if isinstance(layer, keras.layers.Conv2D) else None)
        if kind:
            names[layer.name] = prefix + (f"{kind}_{counts[kind]}" if counts[kind] else kind)
            counts[kind] += 1
    return names


def deeplabv3plus_names(model: keras.Model, weights: dict, rates: list) -> dict:
    """{kseg layer: .h5 group} for `kseg.models.deeplabv3plus(keras_hub_compatible=True)` and a keras-hub DeepLabV3+
    preset's `weights` ("model/..." and "task/..." paths): the ResNet (`backbone_names`), `SpatialPyramidPooling`'s
    Sequentials (1x1, one per rate, pooling; then `projection`), the low-level projection (the backbone's first
    Conv2D and BatchNormalization), `segmentation_head_conv` and its norm (the second), the task's Conv2D; `rates`
    the ASPP's, in keras-hub's order (its `dilation_rates`)."""
    stems = [key[: -len("conv2d/vars/0")] for key, value in weights.items()
             if key.startswith("model/") and key.endswith("/conv2d/vars/0") and value.ndim == 4 and value.shape[2] == 3]
    spp = sorted({key[: key.index("spatial_pyramid_pooling/")] for key in weights
                  if "/spatial_pyramid_pooling/" in key})
    if len(stems) != 1 or len(spp) != 1:
        raise KsegError("not the weights of keras-hub's DeepLabV3Backbone (one ResNet stem, one "
                        "spatial_pyramid_pooling)")
    top, pooling = spp[0], f"{spp[0]}spatial_pyramid_pooling/"
    names = backbone_names(model, stems[0])
    branches = ["aspp_1x1", *(f"aspp_rate{rate}" for rate in rates), "aspp_pooling"]
    for index, branch in enumerate(branches):
        sequential = f"{pooling}aspp_parallel_channels/{'sequential_' + str(index) if index else 'sequential'}/layers/"
        names.update({f"{branch}_conv": f"{sequential}conv2d", f"{branch}_bn": f"{sequential}batch_normalization"})
    names.update({"aspp_projection_conv": f"{pooling}projection/layers/conv2d",
                  "aspp_projection_bn": f"{pooling}projection/layers/batch_normalization",
                  "decoder_low_level_conv": f"{top}conv2d", "decoder_low_level_bn": f"{top}batch_normalization",
                  "decoder_conv1_conv": f"{top}conv2d_1", "decoder_conv1_bn": f"{top}batch_normalization_1",
                  "classifier": "task/layers/conv2d"})
    return names


__all__ = ["ASPP_FILTERS", "DECODER_FILTERS", "LOW_LEVEL", "RESNETS", "backbone_names", "builder_arguments",
           "deeplabv3plus_names"]
