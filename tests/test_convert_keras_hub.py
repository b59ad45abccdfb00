"""keras-hub presets converted (kseg.models.convert.keras_hub_presets): keras-hub 0.32's SegFormer and DeepLabV3+ built
here with random weights (presets cannot be downloaded in tests), saved with `save_to_preset`, converted, and kseg's
logits compared with keras-hub's own on the same pixels in inference mode (keras-hub's preprocessor's scale and
offset applied to its input, kseg has them inside); one-line errors for presets of the wrong kind or with weights
missing; the converted SegFormer's int8 LiteRT file (builtins only)."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

import kseg
from kseg.cli import main
from kseg.deploy import litert, modes
from kseg.errors import KsegError
from kseg.models import convert
from kseg.models.convert import keras_hub_presets
from kseg.models.segformer_layers import GELU

keras_hub = pytest.importorskip("keras_hub")
keras = pytest.importorskip("keras")

TOLERANCE = 1e-4  # largest |kseg - keras-hub| as a share of the largest |logit|: seen at most 6.8e-6 (B0 at 96 x 96)
IMAGENET = {"scale": [1 / (255 * s) for s in (0.229, 0.224, 0.225)],
            "offset": [-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]}
B0 = {"hidden_dims": [32, 64, 160, 256], "layerwise_depths": [2, 2, 2, 2], "layerwise_num_heads": [1, 2, 5, 8],
      "projection_filters": 256}
TINY = {"hidden_dims": [8, 16, 24, 32], "layerwise_depths": [1, 1, 1, 1], "layerwise_num_heads": [1, 1, 1, 1],
        "projection_filters": 16}


def randomise(model, seed=0):
    """Random weights large enough that every part of the graph shows (kernels at 2 / sqrt(fan-in), so GELU sees
    values of a few units) and batch norm statistics that are not the identity's."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape, path = tuple(weight.shape), weight.path
        if "moving_variance" in path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in path:
            value = rng.normal(0.0, 0.5, shape)
        elif "gamma" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) > 1:
            value = rng.normal(0.0, 2.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        weight.assign(value.astype("float32"))


def keras_hub_segformer(size, dims=B0, num_classes=5, converter=None):
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=dims["layerwise_depths"], num_layers=4, layerwise_num_heads=dims["layerwise_num_heads"],
        layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1, layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2], image_shape=(size, size, 3), hidden_dims=dims["hidden_dims"])
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=encoder,
                                                  projection_filters=dims["projection_filters"])
    converter = converter or keras_hub.layers.SegFormerImageConverter(image_size=(size, size), **IMAGENET)
    preprocessor = keras_hub.models.SegFormerImageSegmenterPreprocessor(image_converter=converter)
    return keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                    preprocessor=preprocessor)


def keras_hub_deeplab(shape, num_classes=5):
    """keras-hub's DeepLabV3+ on its ResNet-50 v1, as `deeplab_v3_plus_resnet50_pascalvoc` is built (P5, rates 6, 12,
    18, P2 projected to 48 channels), its images scaled to [0, 1]."""
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block")
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18],
        low_level_feature_key="P2", projection_filters=48, image_shape=(*shape, 3))
    converter = keras_hub.layers.DeepLabV3ImageConverter(image_size=shape, scale=1 / 255)
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(image_converter=converter)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                    preprocessor=preprocessor)


def compare(source, build, shapes, folder):
    """max |kseg - keras-hub| / max |logit| per shape: the first keras-hub model randomised and saved as a preset,
    converted once; the others (keras-hub builds each size apart) take its weights."""
    first = build(shapes[0])
    randomise(first)
    first.save_to_preset(folder)
    model, architecture, args = convert.convert_model(source, folder)
    errors, rng = {}, np.random.default_rng(1)
    for shape in shapes:
        reference = first if shape == shapes[0] else build(shape)
        if reference is not first:
            reference.set_weights(first.get_weights())
        pixels = rng.uniform(0, 255, (2, *shape, 3)).astype("float32")
        theirs = keras.ops.convert_to_numpy(reference(reference.preprocessor.image_converter(pixels), training=False))
        ours = keras.ops.convert_to_numpy(model(pixels, training=False))
        assert ours.shape == theirs.shape == (2, *shape, 5)
        errors[shape] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    return model, architecture, args, errors


def test_a_tiny_segformer_preset_computes_what_keras_hub_does(tmp_path):
    model, architecture, args, errors = compare(
        "keras_hub:segformer", lambda shape: keras_hub_segformer(shape[0], TINY), [(64, 64)], str(tmp_path / "p"))
    assert architecture == "segformer" and args["keras_hub_compatible"] is True
    assert args["widths"] == TINY["hidden_dims"] and args["pixel_offset"] == IMAGENET["offset"]
    assert errors[(64, 64)] <= TOLERANCE, errors
    # the tanh GELU (keras.ops.nn.gelu's default) and the stage norms at 1e-5: too small to show in the logits
    assert all(layer.approximate for layer in model.layers if isinstance(layer, GELU))
    assert model.get_layer("stage4_norm").epsilon == 1e-5 and model.get_layer("stage4_block1_norm1").epsilon == 1e-6


def test_the_approximate_gelu_is_keras_ops_gelu():
    x = np.linspace(-6, 6, 1001, dtype="float32")
    ours = keras.ops.convert_to_numpy(GELU(approximate=True)(x))
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(keras.ops.nn.gelu(x)), atol=1e-6)
    exact = keras.ops.convert_to_numpy(GELU()(x))
    assert np.abs(ours - exact).max() > 1e-4  # they do differ: the option matters
    assert GELU.from_config(GELU(approximate=True).get_config()).approximate


def test_segformer_b0_computes_what_keras_hub_does(tmp_path):
    model, _, args, errors = compare("keras_hub:segformer", lambda shape: keras_hub_segformer(shape[0]),
                                     [(64, 64), (96, 96)], str(tmp_path / "b0"))
    assert args["variant"] == "b0" and "widths" not in args  # B0's widths, named as kseg's variant
    assert max(errors.values()) <= TOLERANCE, errors  # keras-hub's MiT takes squares of 32 multiples only


def test_deeplabv3plus_resnet50_computes_what_keras_hub_does(tmp_path):
    model, architecture, args, errors = compare("keras_hub:deeplabv3plus", keras_hub_deeplab, [(64, 64), (64, 96)],
                                                str(tmp_path / "deeplab"))
    assert architecture == "deeplabv3plus"
    assert args == {"backbone": "resnet50", "output_stride": 32, "low_level_stride": 4, "atrous_rates": [6, 12, 18],
                    "aspp_filters": 256, "decoder_filters": 256, "low_level_filters": 48, "dropout": 0.0,
                    "keras_hub_compatible": True, "pixel_scale": pytest.approx(1 / 255)}
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("keras_hub") / "tiny_segformer")
    segmenter = keras_hub_segformer(64, TINY)
    randomise(segmenter)
    segmenter.save_to_preset(folder)
    return folder


def test_a_preset_of_another_kind_or_with_weights_missing_is_refused(tiny_preset, tmp_path):
    with pytest.raises(KsegError, match=f"^{tiny_preset}: a keras-hub SegFormerBackbone preset, not the "
                                        "DeepLabV3Backbone that .* converts: convert it as keras_hub:segformer$"):
        convert.convert_model("keras_hub:deeplabv3plus", tiny_preset)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_preset, broken)
    with h5py.File(broken / "model.weights.h5", "a") as f:
        del f["layers/sequential/layers/conv2d/vars/0"]
    with pytest.raises(KsegError, match=f"^{broken}: missing model/layers/sequential/layers/conv2d/vars/0$"):
        convert.convert_model("keras_hub:segformer", str(broken))
    shutil.copy(os.path.join(tiny_preset, "model.weights.h5"), broken / "model.weights.h5")
    with h5py.File(broken / "task.weights.h5", "a") as f:
        f["layers/extra/vars/0"] = np.zeros((4, 4), "float32")
    with pytest.raises(KsegError, match=f"^{broken}: unexpected task/layers/extra/vars/0$"):
        convert.convert_model("keras_hub:segformer", str(broken))
    os.remove(broken / "task.json")
    with pytest.raises(KsegError, match=f"^{broken}: a keras-hub SegFormerBackbone without a segmentation head"):
        convert.convert_model("keras_hub:segformer", str(broken))
    with pytest.raises(KsegError, match="not a folder"):
        convert.convert_model("keras_hub:segformer", str(broken / "config.json"))
    with pytest.raises(KsegError, match="no keras-hub config.json"):
        convert.convert_model("keras_hub:segformer", str(tmp_path))


def test_the_command_converts_a_preset_folder(tiny_preset, tmp_path):
    out = str(tmp_path / "segformer")
    assert main(["convert", "keras_hub:segformer", "--weights", tiny_preset, "--out", out]) == 0
    config = kseg.models.pretrained.read_config(out)[1]
    assert config["provenance"]["converted_from"] == "keras_hub:segformer"
    assert config["provenance"]["weights_sha256"] == keras_hub_presets.digest(tiny_preset)
    assert config["builder_args"]["keras_hub_compatible"] is True
    pixels = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    converted, _, _ = convert.convert_model("keras_hub:segformer", tiny_preset)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kseg.models.from_pretrained(out)(pixels)),
                               keras.ops.convert_to_numpy(converted(pixels)), atol=1e-5)
    with open(os.path.join(tiny_preset, "config.json")) as f:
        assert json.load(f)["class_name"] == "SegFormerBackbone"


def test_pixel_scaling_needs_keras_hub_compatible():
    with pytest.raises(kseg.errors.ArgumentError, match="pixel_scale is a keras-hub preset's preprocessing"):
        kseg.models.segformer(2, pixel_scale=1 / 255)
    with pytest.raises(kseg.errors.ArgumentError, match="output_stride 32"):
        kseg.models.deeplabv3plus(2, backbone="resnet50", keras_hub_compatible=True)


def test_the_converted_segformer_exports_to_int8_litert_builtins(tiny_preset, tmp_path):
    model, _, _ = convert.convert_model("keras_hub:segformer", tiny_preset)
    info = litert.to_litert(
        model, str(tmp_path / "segformer.tflite"), mode="int8", artifact=modes.Artifact((64, 64)),
        calibration=kseg.data.load("synthetic", "train", num_images=4, size=(64, 64)))
    assert info["ops"] and "CONV_2D" in info["ops"]
    assert not any(op.startswith("FLEX") or "DELEGATE" in op or op == "CUSTOM" for op in info["ops"]), info["ops"]
