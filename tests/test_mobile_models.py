"""LR-ASPP and DDRNet: parameter counts and MACs against the reference numbers, the features each taps (odd sizes
too), DDRNet's auxiliary head, argument errors, conv -> BN -> activation for tfmot, and float32 LiteRT files that
use only ops TFLite's GPU delegate runs. The registry's contract tests (tests/test_models.py and the export tests)
cover both models as well; these are what is specific to them. Runs under TensorFlow and JAX."""

import inspect
import re

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import complexity

# Parameter counts do not depend on the backend, and JAX compiles each new weight shape's initializer: the full
# width models are counted under TensorFlow only.
TENSORFLOW_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="backend-independent; slow to build under JAX")


def trainable_params(model):
    """PyTorch's parameter count: batch norm's moving statistics are buffers there, not parameters."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def pixels(size, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


def op_names(flatbuffer):
    """The op names of a LiteRT model, in execution order."""
    from kseg.deploy import litert_graph

    return [op.name for op in litert_graph.ops(flatbuffer)]


@pytest.fixture(scope="module")
def tiny_int8_ddrnet():
    """(a tiny DDRNet with trained-like batch-norm statistics, its 8 images at 64x64, its converted int8 file before
    kseg's rewrites)."""
    from kseg.deploy import litert, modes
    from kseg.models import statistics

    keras.utils.set_random_seed(0)
    model = kseg.models.get("ddrnet", 5, tiny=True)
    images = pixels((64, 64), batch=8)
    statistics.set_batch_norm_statistics(model, images)
    return model, images, litert.litert_flatbuffer(model, mode="int8", artifact=modes.Artifact((64, 64)),
                                                   calibration=[image[None] for image in images])


# LR-ASPP ------------------------------------------------------------------------------------------


@TENSORFLOW_ONLY
def test_lraspp_has_torchvisions_parameters_and_macs():
    """torchvision's lraspp_mobilenet_v3_large (21 classes) lists 3,221,538 parameters and 2.09 GFLOPS (its
    "FLOPS" count multiply-accumulates) at 520x520. kseg builds the same graph: equal within 0.1% and 1%.
    `count_params()` also counts batch norm's moving mean and variance (24,656 more, 0.8%)."""
    model = kseg.models.lraspp(21)
    assert trainable_params(model) == pytest.approx(3_221_538, rel=1e-3)
    assert model.count_params() == pytest.approx(3_221_538, rel=1e-2)
    assert complexity.count_macs(model, (520, 520)) / 1e9 == pytest.approx(2.09, rel=1e-2)


@TENSORFLOW_ONLY
@pytest.mark.parametrize("backbone, torchvision_params, last_channels", [
    ("mobilenetv3_large", 1_747_218, 480), ("mobilenetv3_small", 515_922, 288)])
def test_lraspp_reduced_tail_has_torchvisions_parameters(backbone, torchvision_params, last_channels):
    """`reduced_tail` halves the last stage (the MobileNetV3 paper's "RF2"): torchvision's LR-ASPP (21 classes) on
    `mobilenet_v3_large(dilated=True, reduced_tail=True)` lists 1,747,218 parameters, on the Small one 515,922
    (torchvision 0.29, counted with `sum(p.numel() for p in model.parameters())`); kseg's within 0.1%."""
    model = kseg.models.lraspp(21, backbone=backbone, backbone_kwargs={"reduced_tail": True})
    assert trainable_params(model) == pytest.approx(torchvision_params, rel=1e-3)
    assert model.get_layer("conv_1").filters == last_channels


@pytest.mark.parametrize("backbone, low_channels, high_channels", [
    ("mobilenetv3_large", 40, 960), ("mobilenetv3_small", 24, 576)])
def test_lraspp_taps_torchvisions_features(backbone, low_channels, high_channels):
    """Low level: the output of the block that reaches stride 8 (torchvision's C2); high level: the last 1x1
    convolution at stride 16. Odd sizes round up: ceil(65 / 8) = 9, ceil(67 / 16) = 5."""
    model = kseg.models.lraspp(5, input_shape=(65, 67, 3), backbone=backbone)
    low = model.get_layer("low_classifier").input
    high = model.get_layer("head_cbr_conv").input
    assert tuple(low.shape[1:]) == (9, 9, low_channels)
    assert tuple(high.shape[1:]) == (5, 5, high_channels)
    assert tuple(model.get_layer("head_scale_pool").output.shape[1:]) == (1, 1, high_channels)  # a global gate
    assert tuple(model.get_layer("head_upsample").output.shape[1:]) == (9, 9, 128)
    assert tuple(model.output.shape[1:]) == (65, 67, 5)


def test_lraspp_dilates_the_last_stage_at_output_stride_16():
    model = kseg.models.get("lraspp", 3, tiny=True)
    assert model.get_layer("expanded_conv_12_depthwise").strides == (1, 1)  # the stride-32 block keeps stride 1
    assert model.get_layer("expanded_conv_13_depthwise").dilation_rate == (2, 2)


# DDRNet -------------------------------------------------------------------------------------------

# Paper, table 4 (Cityscapes, 1024x2048 input): DDRNet-23-slim 5.7 M parameters and 36.3 "GFLOPs", DDRNet-23
# 20.1 M and 143.1 (multiply-accumulates, as kseg.complexity counts them). Both counts within 1%.
DDRNET_PAPER = {"23-slim": (5.7e6, 36.3e9), "23": (20.1e6, 143.1e9)}


@pytest.mark.parametrize("variant", ["23-slim", pytest.param("23", marks=TENSORFLOW_ONLY)])
def test_ddrnet_has_the_papers_parameters_and_macs(variant):
    model = kseg.models.ddrnet(19, variant=variant)
    params, macs = DDRNET_PAPER[variant]
    assert trainable_params(model) == pytest.approx(params, rel=1e-2)
    assert complexity.count_macs(model, (1024, 2048)) == pytest.approx(macs, rel=1e-2)


def test_ddrnet_branches_and_dappm_take_odd_sizes():
    """65x67: the high branch at ceil(size / 8), the low branch at ceil(size / 16, 32, 64); every pool of DAPPM
    is "same", so even the 17x17 pool of a 2x2 map is 1x1, resized back to 2x2."""
    model = kseg.models.get("ddrnet", 3, input_shape=(65, 67, 3), tiny=True)
    sizes = {name: tuple(model.get_layer(name).output.shape[1:3]) for name in (
        "fuse3_high_add", "fuse3_low_add", "fuse4_high_add", "fuse4_low_add", "stage5_high_relu", "stage5_low_relu",
        "dappm_scale1_pool", "dappm_scale3_pool", "dappm_scale4_pool", "dappm_add", "final_add")}
    assert sizes == {
        "fuse3_high_add": (9, 9), "fuse3_low_add": (5, 5), "fuse4_high_add": (9, 9), "fuse4_low_add": (3, 3),
        "stage5_high_relu": (9, 9), "stage5_low_relu": (2, 2), "dappm_scale1_pool": (1, 1),
        "dappm_scale3_pool": (1, 1), "dappm_scale4_pool": (1, 1), "dappm_add": (2, 2), "final_add": (9, 9)}
    # widths: high branch 2 * planes, low 4, 8 and 16 * planes, DAPPM back to 4 * planes (planes = 8 at tiny)
    assert model.get_layer("fuse3_low_add").output.shape[-1] == 32
    assert model.get_layer("stage5_low_relu").output.shape[-1] == 128
    assert model.get_layer("dappm_add").output.shape[-1] == model.get_layer("stage5_high_relu").output.shape[-1] == 32
    out = model(pixels((65, 67), batch=2))
    assert tuple(out.shape) == (2, 65, 67, 3) and np.isfinite(keras.ops.convert_to_numpy(out)).all()


def test_ddrnet_auxiliary_head_trains_with_a_loss_per_output():
    keras.utils.set_random_seed(0)
    model = kseg.models.get("ddrnet", 3, tiny=True, auxiliary_head=True)
    assert [tensor.shape[-1] for tensor in model.outputs] == [3, 3]
    x = pixels((65, 67), batch=2)
    logits, aux = model(x)
    assert tuple(logits.shape) == tuple(aux.shape) == (2, 65, 67, 3)
    # the high branch after the first bilateral fusion (the paper's conv4), activated
    assert model.get_layer("aux_head_conv").input is model.get_layer("fuse3_high_relu").output
    masks = (x.mean(-1) // 86).astype("uint8")
    model.compile(keras.optimizers.Adam(1e-3), loss=[kseg.losses.CrossEntropy()] * 2, loss_weights=[1.0, 0.4])
    model.optimizer.build(model.trainable_variables)
    history = model.fit(x, (masks, masks), epochs=2, batch_size=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    # The deployed model is the first output: same layers, same weights, same logits.
    deployed = keras.Model(model.input, model.outputs[0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(deployed(x)), keras.ops.convert_to_numpy(model(x)[0]),
                               rtol=1e-5, atol=1e-5)
    assert len(kseg.models.get("ddrnet", 3, tiny=True).outputs) == 1  # off by default


# Both ---------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [  # (architecture, argument, value, message start)
    ("lraspp", "backbone", "mobilenetv2", "backbone must be one of ('mobilenetv3_large', 'mobilenetv3_small'), got"),
    ("lraspp", "output_stride", 4, "output_stride must be one of (8, 16, 32), got 4"),
    ("lraspp", "low_level_stride", 16, "low_level_stride must be one of (4, 8), got 16"),
    ("lraspp", "head_filters", 0, "head_filters must be a positive integer, got 0"),
    ("lraspp", "backbone_kwargs", "alpha=0.5", "backbone_kwargs must be a dict"),
    ("ddrnet", "variant", "39", "variant must be one of ('23-slim', '23'), got '39'"),
    ("ddrnet", "planes", 0, "planes must be a positive integer or None, got 0"),
    ("ddrnet", "ppm_planes", 2.5, "ppm_planes must be a positive integer or None, got 2.5"),
    ("ddrnet", "auxiliary_head", "yes", "auxiliary_head must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("name, argument, value, message", BAD_ARGUMENTS)
def test_builders_name_the_bad_argument(name, argument, value, message):
    with pytest.raises(ValueError) as error:
        kseg.models.get(name, 3, tiny=True, **{argument: value})
    assert str(error.value).startswith(message)


def test_lraspp_low_level_stride_must_be_below_output_stride():
    with pytest.raises(ValueError, match=r"^low_level_stride \(8\) must be below output_stride \(8\)"):
        kseg.models.lraspp(3, output_stride=8)
    model = kseg.models.lraspp(3, output_stride=8, low_level_stride=4, head_filters=8)
    assert model.get_layer("low_classifier").input.shape[-1] == 24  # MobileNetV3-Large's first stride-4 block
    assert model.get_layer("expanded_conv_6_depthwise").strides == (1, 1)  # stride 16 and 32 dilated


@pytest.mark.parametrize("name", ["lraspp", "ddrnet"])
def test_every_batch_norm_follows_a_convolution(name):
    """tfmot's QAT wants Conv -> BN -> activation: a BN after a pool, an addition or a concatenation raises."""
    model = kseg.models.get(name, 3, tiny=True)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:
        producer = layer.input._keras_history.operation
        assert isinstance(producer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)), \
            f"{layer.name} follows {producer.name}"


@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lraspp", "ddrnet"])
def test_tfmot_annotates_the_tf_keras_twin(name):
    """QAT through the bridge: MobileNetV3's hard-swish / hard-sigmoid and the gating Multiply need kseg's
    twins and quantize configs (tfmot 0.8.1 quantizes neither); DDRNet's pools are tfmot's own."""
    from kseg.deploy import compression

    model = kseg.models.get(name, 3, tiny=True)
    quantized = compression.quantize_twin(compression.to_tf_keras(model, (48, 56)))
    assert tuple(quantized(pixels((48, 56))).shape) == (1, 48, 56, 3)


def float32_flatbuffer(model, size):
    from kseg.deploy import litert, modes

    if "artifact" in inspect.signature(litert.litert_flatbuffer).parameters:  # the keyword-only signature
        return litert.litert_flatbuffer(model, mode="float32", artifact=modes.Artifact(size))
    return litert.litert_flatbuffer(model, mode="float32", input_size=size)


@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lraspp", "ddrnet"])
def test_float32_litert_file_suits_the_gpu_delegate(name):
    """TensorFlow's static GPU check and kseg's stricter one (`kseg.deploy.gpu`: the delegate's op list, 4-D
    tensors at most, bilinear resizes with align_corners=False) both pass, and the resizes are PyTorch's
    align_corners=False (half-pixel centres)."""
    from kseg.deploy import gpu

    report = gpu.check(float32_flatbuffer(kseg.models.get(name, 19), (65, 67)))
    assert report["analyzer"]["compatible"] and report["kseg"]["compatible"], report["problems"]
    assert report["compatible"]


@requires_tensorflow
@pytest.mark.slow
def test_int8_file_folds_hard_swish_divisions_into_the_scales():
    """LR-ASPP's int8 file loses the `x / 6` multiplies of its hard-swishes and hard-sigmoids
    (`kseg.deploy.rewrites.fold_constant_multiplies`) and its logits come no farther from the float model's."""
    from ai_edge_litert.interpreter import Interpreter

    from kseg.deploy import litert, modes, rewrites
    from kseg.models import statistics

    size = (64, 72)
    keras.utils.set_random_seed(0)
    model = kseg.models.get("lraspp", 6, backbone_kwargs={"alpha": 0.5}, head_filters=32)
    images = pixels(size, batch=8)
    statistics.set_batch_norm_statistics(model, images)  # trained-like activation ranges
    converted = litert.litert_flatbuffer(model, mode="int8", artifact=modes.Artifact(size),
                                         calibration=[image[None] for image in images])
    folded = rewrites.fold_constant_multiplies(converted)
    assert op_names(folded).count("MUL") <= op_names(converted).count("MUL") - 10
    assert rewrites.fold_constant_multiplies(folded) == folded  # what is left cannot be folded

    def error(flatbuffer):
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        given, returned = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        scale, zero = returned["quantization"]
        errors = []
        for image in images[4:]:
            interpreter.set_tensor(given["index"], image[None].astype(given["dtype"]))
            interpreter.invoke()
            logits = (interpreter.get_tensor(returned["index"]).astype("float32") - zero) * scale
            errors.append(np.abs(logits - keras.ops.convert_to_numpy(model(image[None], training=False))).mean())
        return float(np.mean(errors))

    assert error(folded) <= 1.05 * error(converted)


@requires_tensorflow
def test_int8_file_runs_standalone_relus_as_fused_adds(tiny_int8_ddrnet):
    """DDRNet rectifies residual sums that other ops also read, so the converter leaves standalone int8 RELUs, which
    XNNPACK does not take (LiteRT's reference kernel ran them: 30% of DDRNet-23-slim's int8 call). The published
    file has them as ADDs of zero with the ReLU fused (`kseg.deploy.rewrites.relu_as_fused_add`): every logit
    within one quantization step of the converter's file, nearly all equal."""
    from ai_edge_litert.interpreter import Interpreter

    from kseg.deploy import rewrites

    model, images, converted = tiny_int8_ddrnet
    rewritten = rewrites.relu_as_fused_add(converted)

    relus = op_names(converted).count("RELU")
    assert relus >= 2 and "RELU" not in op_names(rewritten)
    assert op_names(rewritten).count("ADD") == op_names(converted).count("ADD") + relus
    assert rewrites.relu_as_fused_add(rewritten) == rewritten

    outputs = []
    for content in (converted, rewritten):
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        given, returned = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(given["index"], images[:1].astype(given["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(returned["index"]).astype(int))
    difference = np.abs(outputs[0] - outputs[1])
    assert difference.max() <= 1 and (difference == 0).mean() > 0.95


@requires_tensorflow
def test_int8_file_normalises_per_channel_in_one_depthwise_convolution(tiny_int8_ddrnet):
    """DDRNet normalises its input per channel, (x - mean) / std: in int8 a MUL and an ADD of constant vectors, which
    XNNPACK runs slowly over the image (2 ms of DDRNet-23-slim's 9 at 512x512). The published file computes it as one
    1x1 DEPTHWISE_CONV_2D (`kseg.deploy.rewrites.affine_as_depthwise`), one rounding where there were two: its
    normalised image is nearer the exact one. Downstream, a random-weight model turns any change of rounding into
    noise (logit error against the float model: -2% to +3% over three seeds, +9% here): the logits stay in range."""
    from ai_edge_litert.interpreter import Interpreter

    from kseg.deploy import rewrites

    model, images, converted = tiny_int8_ddrnet
    rewritten = rewrites.affine_as_depthwise(converted)

    assert op_names(rewritten).count("MUL") == op_names(converted).count("MUL") - 1
    assert op_names(rewritten).count("DEPTHWISE_CONV_2D") == op_names(converted).count("DEPTHWISE_CONV_2D") + 1
    assert rewrites.affine_as_depthwise(rewritten) == rewritten

    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255

    def errors(flatbuffer):
        interpreter = Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        given, returned = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        normalised = next(d for d in interpreter.get_tensor_details() if re.search(r"normalize(_\d+)?/add$", d["name"]))
        normalised_scale, normalised_zero = normalised["quantization"]
        scale, zero = returned["quantization"]
        found = []
        for image in images[4:]:
            interpreter.set_tensor(given["index"], image[None].astype(given["dtype"]))
            interpreter.invoke()
            logits = (interpreter.get_tensor(returned["index"]).astype("float32") - zero) * scale
            want = keras.ops.convert_to_numpy(model(image[None], training=False))
            values = interpreter.get_tensor(normalised["index"]).astype("float32")
            exact = (np.round(image[None]) - mean) / std
            found.append((np.abs((values - normalised_zero) * normalised_scale - exact).mean(),
                          np.abs(logits - want).mean()))
        return np.mean(found, axis=0)

    before, after = errors(converted), errors(rewritten)
    assert after[0] < before[0] and after[1] <= 1.25 * before[1], (before, after)
