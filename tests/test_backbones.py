"""Every registered backbone: features by stride, weights by name from keras.applications, parity, LiteRT ops.

Runs under TensorFlow and JAX (the LiteRT test is TensorFlow-only).
"""

import math

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.deploy import modes
from kseg.models import backbones, blocks

MOBILE = {"mobilenetv2": {"alpha": 0.35}, "mobilenetv3_large": {"alpha": 0.35}, "mobilenetv3_small": {"alpha": 0.35}}
NARROW = {**MOBILE, "vgg16": {"width": 0.125}, "vgg16_bn": {"width": 0.125}}  # where no weights are loaded
TWINS = [name for name in backbones.names() if backbones.get(name).keras_application]

# A layer that output stride 8 dilates, and its rate there.
DILATED_AT_8 = {
    "mobilenetv2": ("block_7_depthwise", 2),
    "mobilenetv3_large": ("expanded_conv_13_depthwise", 4),
    "mobilenetv3_small": ("expanded_conv_9_depthwise", 4),
    "resnet50": ("conv5_block1_2_conv", 4),
    "resnet101": ("conv4_block23_2_conv", 2),
    "vgg16": ("block5_conv1", 2),
    "xception": ("block14_sepconv1", 4),
}


def features_model(name, input_shape, output_stride, **kwargs):
    pixels = blocks.pixel_input(input_shape)
    features = backbones.build(name, pixels, output_stride=output_stride, **kwargs)
    return keras.Model(pixels, features)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", backbones.names())
def test_features_by_stride_are_ceil_of_input_size(name, output_stride):
    """Every builder pads "same" (ResNet centres it with ZeroPadding), so stride s gives ceil(size / s)."""
    height, width = 61, 83
    model = features_model(name, (height, width, 3), output_stride, **NARROW.get(name, {}))
    assert set(model.output) == {s for s in (2, 4, 8, 16, 32) if s <= output_stride}
    for stride, tensor in model.output.items():
        assert tuple(tensor.shape[1:3]) == (math.ceil(height / stride), math.ceil(width / stride)), stride


@pytest.mark.parametrize("name", ["mobilenetv3_small", "xception", "vgg16"])
def test_features_of_any_size_input_at_run_time(name):
    model = features_model(name, (None, None, 3), 8, **NARROW.get(name, {}))
    x = np.random.default_rng(0).uniform(0, 255, (1, 61, 83, 3)).astype("float32")
    for stride, y in model(x).items():
        assert tuple(y.shape[1:3]) == (math.ceil(61 / stride), math.ceil(83 / stride))
        assert np.isfinite(keras.ops.convert_to_numpy(y)).all()


def _randomize(model, seed=0):
    """Random but well-scaled weights: Glorot kernels as initialised, batch-norm statistics made non-trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        leaf = variable.path.split("/")[-1]
        if leaf in ("gamma", "moving_variance"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif leaf in ("beta", "moving_mean", "bias"):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))


@pytest.fixture(scope="module")
def twin_weights(tmp_path_factory):
    """{name: (keras.applications model with random weights, path of its .weights.h5)}, made on demand."""
    made = {}

    def make(name):
        if name not in made:
            application = getattr(keras.applications, backbones.get(name).keras_application)
            reference = application(include_top=False, weights=None, input_shape=(None, None, 3),
                                    **MOBILE.get(name, {}))
            _randomize(reference)
            path = str(tmp_path_factory.mktemp("weights") / f"{name}.weights.h5")
            reference.save_weights(path)
            made[name] = reference, path
        return made[name]

    return make


@pytest.mark.parametrize("name", TWINS)
def test_keras_applications_weights_load_by_name_into_dilated_backbone(name, twin_weights):
    reference, path = twin_weights(name)
    model = features_model(name, (65, 65, 3), 8, weights=path, **MOBILE.get(name, {}))
    ours = {layer.name: layer for layer in model.layers}
    named = [layer for layer in reference.layers if layer.weights and layer.name in ours]
    assert len(named) >= 0.9 * sum(1 for layer in reference.layers if layer.weights)
    for twin in named:
        for got, want in zip(ours[twin.name].get_weights(), twin.get_weights()):
            np.testing.assert_array_equal(got, want)
    # Every weight came from the twin, also those of layers keras.applications leaves unnamed
    # (Xception's shortcuts); MobileNetV2 alone has twin weights kseg does not build (its 1280-channel head).
    assert {w.tobytes() for w in model.get_weights()} <= {w.tobytes() for w in reference.get_weights()}
    assert model.count_params() == reference.count_params() or name == "mobilenetv2"
    layer, rate = DILATED_AT_8[name]
    assert model.get_layer(layer).dilation_rate == (rate, rate)


@pytest.mark.parametrize("name, tail_blocks", [("mobilenetv3_large", (12, 13, 14)), ("mobilenetv3_small", (8, 9, 10))])
def test_reduced_tail_takes_imagenet_weights_but_its_last_stage(name, tail_blocks, twin_weights):
    """MobileNetV3 with `reduced_tail` (half the last stage's channels) loads the keras.applications file's weights
    into every layer whose shape the halving keeps; only layers of the halved stage are left out. The cached file
    is the same as without it."""
    reference, path = twin_weights(name)
    options = {**MOBILE[name], "reduced_tail": True}
    assert backbones.imagenet_file(name, **options) == backbones.imagenet_file(name, **MOBILE[name])
    model = features_model(name, (65, 65, 3), 16, weights=path, **options)
    theirs = {layer.name: layer for layer in reference.layers if layer.weights}
    tail = tuple(f"expanded_conv_{block}_" for block in tail_blocks) + ("conv_1",)
    loaded, kept = 0, 0
    for layer in (layer for layer in model.layers if layer.name in theirs):
        shapes_fit = [w.shape for w in layer.get_weights()] == [w.shape for w in theirs[layer.name].get_weights()]
        if shapes_fit:
            for got, want in zip(layer.get_weights(), theirs[layer.name].get_weights()):
                np.testing.assert_array_equal(got, want)
            loaded += 1
        else:
            assert layer.name.startswith(tail), layer.name  # only the last stage is reshaped
            kept += 1
    assert kept >= 4 and loaded > kept and loaded + kept == len(theirs)  # every twin layer found by name


@pytest.mark.parametrize("name, preprocess", [
    ("resnet50", keras.applications.resnet.preprocess_input),
    ("vgg16", keras.applications.vgg16.preprocess_input),
])
def test_output_stride_32_matches_keras_applications(name, preprocess, twin_weights):
    """Same weights, same [0, 255] RGB pixels: kseg normalises in the graph, keras.applications beforehand."""
    reference, path = twin_weights(name)
    model = features_model(name, (64, 64, 3), 32, weights=path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(reference(preprocess(x.copy())))
    got = keras.ops.convert_to_numpy(model(x)[32])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_vgg16_bn_has_no_imagenet_weights():
    with pytest.raises(kseg.KsegError, match="backbone 'vgg16_bn' has no ImageNet weights in keras.applications"):
        backbones.build("vgg16_bn", blocks.pixel_input((32, 32, 3)), weights="imagenet")


def test_vgg16_layout_is_exported_and_matches_the_built_convolutions():
    model = features_model("vgg16", (32, 32, 3), 32, width=0.25)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [f // 4 for n, f in backbones.VGG16_STAGES for _ in range(n)]


def test_narrow_vgg16_refuses_imagenet_shaped_weights(twin_weights):
    _, path = twin_weights("vgg16")
    with pytest.raises(kseg.KsegError, match="VGG16 weights do not fit backbone layer 'block1_conv1'"):
        backbones.build("vgg16", blocks.pixel_input((32, 32, 3)), weights=path, width=0.5)


def test_unknown_option_is_rejected_with_the_accepted_ones():
    with pytest.raises(kseg.KsegError, match=r"does not take \['alpha'\]; it takes \[\]"):
        backbones.build("resnet50", blocks.pixel_input((32, 32, 3)), alpha=0.5)


def test_caffe_normalisation_round_trips_through_a_keras_file(tmp_path):
    pixels = blocks.pixel_input((None, None, 3))
    model = keras.Model(pixels, backbones.build("vgg16", pixels)[2])
    assert isinstance(model.get_layer("rgb_to_bgr"), backbones.ReverseChannels)
    x = np.random.default_rng(0).uniform(0, 255, (1, 15, 17, 3)).astype("float32")
    model.save(tmp_path / "vgg.keras")
    loaded = keras.saving.load_model(tmp_path / "vgg.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5)


@requires_tensorflow
def test_mobilenetv3_dilated_converts_to_litert_builtins(tmp_path):
    """Hard-swish becomes MUL and ADD (with RELU6 fused), not the HARD_SWISH op XNNPACK cannot run in int8;
    squeeze-excite plain MEAN/CONV_2D/ADD/MUL: no Flex ops, values unchanged."""
    from kseg import runtime
    from kseg.deploy import litert

    pixels = blocks.pixel_input((None, None, 3))
    features = backbones.build("mobilenetv3_small", pixels, output_stride=16, alpha=0.35)
    model = keras.Model(pixels, features[max(features)], name="mobilenetv3_small_os16")
    path = str(tmp_path / "m.tflite")
    info = litert.to_litert(model, path, mode="float32", artifact=modes.Artifact((64, 64)))
    assert "HARD_SWISH" not in info["ops"], info["ops"]
    assert not any(op.startswith("FLEX") for op in info["ops"]), info["ops"]
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(runtime.LiteRTModel(path).run(x[0]), keras.ops.convert_to_numpy(model(x))[0],
                               atol=1e-4, rtol=1e-4)
