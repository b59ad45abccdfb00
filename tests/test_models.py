"""Every registered architecture, the way a user builds and trains it. Runs under TensorFlow and JAX."""

import keras
import numpy as np
import pytest

import kseg
from kseg.models import backbones, blocks, custom_layers

NUM_CLASSES = 3
SHAPES = [(64, 64), (61, 83)]


def tiny(name, input_shape=(None, None, 3), **kwargs):
    return kseg.models.get(name, NUM_CLASSES, input_shape=input_shape, tiny=True, **kwargs)


def test_registry_rejects_unknown_names_with_the_list():
    with pytest.raises(kseg.KsegError, match="unknown model 'nope'; available: .*unet"):
        kseg.models.get("nope", 3)


def test_resize_like_layer_config_round_trip():
    layer = custom_layers.ResizeLike("nearest", name="fit")
    clone = custom_layers.ResizeLike.from_config(layer.get_config())
    assert clone.interpolation == "nearest" and clone.name == "fit"
    x, ref = np.ones((1, 3, 5, 2), "float32"), np.zeros((1, 7, 9, 4), "float32")
    assert tuple(layer([x, ref]).shape) == (1, 7, 9, 2)


@pytest.mark.parametrize("output_stride, expected", [(8, {2, 4, 8}), (16, {2, 4, 8, 16}), (32, {2, 4, 8, 16, 32})])
def test_backbone_features_by_stride(output_stride, expected):
    pixels = blocks.pixel_input((64, 64, 3))
    features = backbones.build("mobilenetv2", pixels, output_stride=output_stride, alpha=0.35)
    assert set(features) == expected
    for stride, tensor in features.items():
        assert tensor.shape[1] == 64 // stride


def test_atrous_schedule_turns_strides_into_rates():
    schedule = backbones.AtrousSchedule(8)
    assert [schedule(s) for s in (2, 2, 1, 2, 1, 2, 1)] == [(2, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 2)]


def test_imagenet_style_weights_load_into_dilated_backbone(tmp_path):
    """Weights saved from keras.applications.MobileNetV2 load by name into kseg's output-stride-8 variant."""
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=None, alpha=0.35, input_shape=(224, 224, 3))
    rng = np.random.default_rng(0)
    reference.set_weights([rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()])
    path = str(tmp_path / "mobilenetv2.weights.h5")
    reference.save_weights(path)
    model = kseg.models.deeplabv3plus(
        NUM_CLASSES, input_shape=(65, 65, 3), output_stride=8, backbone_weights=path,
        backbone_kwargs={"alpha": 0.35}, aspp_filters=16, decoder_filters=16)
    for name in ("Conv1", "block_7_depthwise", "block_16_project_BN"):
        for got, want in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    assert model.get_layer("block_7_depthwise").dilation_rate == (2, 2)


def test_bad_weights_file_is_one_line_error(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not an h5 file")
    with pytest.raises(kseg.KsegError, match="cannot load MobileNetV2 weights") as info:
        kseg.models.deeplabv3plus(3, backbone_weights=str(path), backbone_kwargs={"alpha": 0.35})
    assert "\n" not in str(info.value)


BAD_ARGUMENTS = [  # (architecture, argument, value, message start): each fails before a layer is built
    ("unet", "filters", 0, "filters must be a positive integer"),
    ("unet", "depth", 0, "depth must be a positive integer"),
    ("unet", "norm", "instance", "norm must be one of"),
    ("unet", "dropout", 1.5, "dropout must be a rate in [0, 1)"),
    ("unet", "backbone_kwargs", "alpha=0.5", "backbone_kwargs must be a dict"),
    ("segnet", "width", -1, "width must be a positive number"),
    ("fcn8s", "fc_filters", 0, "fc_filters must be a positive integer"),
    ("fcn32s", "dropout", -0.1, "dropout must be a rate"),
    ("refinenet", "filters", (256, 256), "filters must give 4 values"),
    ("refinenet", "pooling_stages", 0, "pooling_stages must be a positive integer"),
    ("deeplabv3", "output_stride", 12, "output_stride must be one of (8, 16)"),
    ("deeplabv3", "atrous_rates", (6, 0, 18), "atrous_rates must be a positive integer"),
    ("deeplabv3plus", "output_stride", 12, "output_stride must be one of (8, 16, 32)"),
    ("deeplabv3plus", "low_level_stride", 3, "low_level_stride must be one of"),
    ("deeplabv3plus", "decoder_filters", 0, "decoder_filters must be a positive integer"),
    ("hrnet", "variant", "w99", "variant must be one of"),
    ("hrnet", "stem_filters", 0, "stem_filters must be a positive integer"),
]


@pytest.mark.parametrize("name, argument, value, message", BAD_ARGUMENTS)
def test_builders_check_their_arguments(name, argument, value, message):
    with pytest.raises(ValueError) as error:
        kseg.models.get(name, NUM_CLASSES, tiny=True, **{argument: value})
    assert str(error.value).startswith(message)
