"""SegFormer: the paper's parameter counts and MACs, stage sizes on odd inputs, the attention and LayerNorm
against plain references, argument errors, the GPU delegate's static check, and int8 / int16x8 files that
agree with the float model once it has learned something. Runs under TensorFlow and JAX (conversion: TF only)."""

import contextlib
import io
import re

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import complexity
from kseg.models.segformer import EfficientAttention, LayerNormalization

# Xie et al. 2021 (ADE20K models, 150 classes, 512x512): parameters (millions, trainable, PyTorch's count:
# batch-norm statistics are buffers there) and "GFLOPs" (mmcv's count, i.e. multiply-accumulates).
PAPER = {"b0": (3.8, 8.4), "b1": (13.7, 15.9), "b2": (27.5, 62.4)}
TOLERANCE = 0.02  # the paper rounds to one decimal: B0's 3.75 M is 1.3% under 3.8
TENSORFLOW_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="backend-independent counts; slow to build under JAX")


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("variant", ["b0", *(pytest.param(v, marks=TENSORFLOW_ONLY) for v in ("b1", "b2"))])
def test_parameters_and_macs_match_the_paper(variant):
    params, gmacs = PAPER[variant]
    model = kseg.models.segformer(150, variant=variant)
    assert trainable_params(model) / 1e6 == pytest.approx(params, rel=TOLERANCE)
    report = complexity.complexity(model, (512, 512))
    assert report.macs / 1e9 == pytest.approx(gmacs, rel=TOLERANCE)
    assert report.by_type["EfficientAttention"] > 0  # the attention's products are counted, as the paper does


def test_b0_attention_macs_by_hand():
    # Per block: 2 * tokens * keys * channels; 512x512 gives stage maps 128, 64, 32, 16 and keys 16x16 at every stage.
    expected = sum(2 * 2 * (512 // s) ** 2 * 16 * 16 * c for s, c in zip((4, 8, 16, 32), (32, 64, 160, 256)))
    report = complexity.complexity(kseg.models.segformer(150, variant="b0"), (512, 512))
    assert report.by_type["EfficientAttention"] == expected


@pytest.mark.parametrize("size", [(65, 67), (17, 9), (1, 1)])
def test_odd_sizes_give_ceil_stage_sizes_and_input_sized_logits(size):
    model = kseg.models.get("segformer", 5, input_shape=(*size, 3), tiny=True)
    for stage, stride in enumerate((4, 8, 16, 32), start=1):
        assert tuple(model.get_layer(f"stage{stage}_norm").output.shape[1:3]) == tuple(-(-s // stride) for s in size)
    x = np.random.default_rng(0).uniform(0, 255, (2, *size, 3)).astype("float32")
    assert tuple(model(x).shape) == (2, *size, 5)
    # A call without `training` is inference (keras-hub#2495: keras-hub's SegFormer runs its decoder's batch norm
    # on batch statistics there, so its LiteRT test compares the file with a training-mode reference).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))
    dynamic = kseg.models.get("segformer", 5, tiny=True)
    dynamic.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dynamic(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-4)


def test_reduction_convolution_sees_every_pixel_of_sizes_the_ratio_does_not_divide():
    model = kseg.models.get("segformer", 3, input_shape=(65, 67, 3), tiny=True)
    # Stage 1 is 17x17; the ratio-8 reduction gives ceil(17 / 8) = 3 keys a side (the reference's floor: 2).
    assert tuple(model.get_layer("stage1_block1_attn_sr").output.shape[1:3]) == (3, 3)


def test_attention_matches_a_plain_multi_head_reference():
    rng = np.random.default_rng(0)
    heads, channels = 4, 16
    q, k, v = (rng.normal(size=shape).astype("float32") for shape in
               ((2, 5, 7, channels), (2, 2, 3, channels), (2, 2, 3, channels)))
    got = keras.ops.convert_to_numpy(EfficientAttention(heads)([q, k, v]))
    d = channels // heads
    want = np.zeros_like(q)
    for b in range(2):
        tokens, keys, values = q[b].reshape(-1, channels), k[b].reshape(-1, channels), v[b].reshape(-1, channels)
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            scores = tokens[:, part] @ keys[:, part].T / np.sqrt(d)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            want[b].reshape(-1, channels)[:, part] = weights @ values[:, part]
    np.testing.assert_allclose(got, want, atol=1e-5)
    clone = EfficientAttention.from_config(EfficientAttention(heads).get_config())
    assert clone.num_heads == heads


def test_layer_norm_equals_keras_layer_norm():
    x = np.random.default_rng(1).normal(3, 5, (2, 4, 5, 16)).astype("float32")
    ours, theirs = LayerNormalization(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
    ours.build(x.shape)
    theirs.build(x.shape)
    weights = [np.random.default_rng(i).normal(size=16).astype("float32") for i in (2, 3)]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)),
                               atol=1e-5)


def test_reference_layer_norm_epsilons():
    model = kseg.models.segformer(3, variant="b0")
    assert model.get_layer("stage1_block1_norm1").epsilon == 1e-6 == model.get_layer("stage4_norm").epsilon
    assert model.get_layer("stage1_patch_embed_norm").epsilon == 1e-5
    assert model.get_layer("stage1_block1_attn_sr_norm").epsilon == 1e-5
    assert model.get_layer("decoder_fuse_bn").epsilon == 1e-5


BAD_ARGUMENTS = [
    ("variant", "b9", "variant must be one of"),
    ("widths", (8, 16, 24), "widths must give 4 values"),
    ("depths", (1, 0, 1, 1), "depths must be a positive integer, got 0"),
    ("heads", (1, 3, 1, 1), r"widths\[1\] \(16\) must be divisible by heads\[1\] \(3\)"),
    ("sr_ratios", "8421", "sr_ratios must be a sequence of positive integers"),
    ("mlp_ratio", 0, "mlp_ratio must be a positive integer"),
    ("decoder_width", 2.5, "decoder_width must be a positive integer"),
    ("drop_path_rate", 1.0, r"drop_path_rate must be a rate in \[0, 1\)"),
    ("dropout", -0.1, r"dropout must be a rate in \[0, 1\)"),
    ("layer_norm_epsilon", 0, "layer_norm_epsilon must be a positive number"),
]


@pytest.mark.parametrize("argument, value, message", BAD_ARGUMENTS)
def test_bad_arguments_fail_before_building_naming_the_argument(argument, value, message):
    with pytest.raises(ValueError, match=message):
        kseg.models.get("segformer", 3, tiny=True, **{argument: value})


# Conversion (TensorFlow only) --------------------------------------------------------------------------

MULTI_HEAD = {"widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "heads": (1, 2, 3, 4), "decoder_width": 32}


def gpu_report(flatbuffer):
    import tensorflow as tf

    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer, gpu_compatibility=True)
    return report.getvalue()


@requires_tensorflow
def test_float32_file_passes_the_gpu_delegate_check_with_4d_tensors_at_most():
    from ai_edge_litert.interpreter import Interpreter

    from kseg.deploy import litert, modes

    model = kseg.models.segformer(3, **MULTI_HEAD)
    flatbuffer = litert.litert_flatbuffer(model, mode="float32", artifact=modes.Artifact((64, 72)))
    report = gpu_report(flatbuffer)
    assert "looks compatible with GPU delegate" in report, report
    ops = set(re.findall(r"Op#\d+ (\w+)\(", report))
    assert {"BATCH_MATMUL", "SOFTMAX", "TRANSPOSE", "CONV_2D", "DEPTHWISE_CONV_2D"} <= ops
    assert not ops & {"GATHER", "GATHER_ND", "CUSTOM"} and not any(op.startswith("FLEX") for op in ops)
    ranks = {len(t["shape"]) for t in Interpreter(model_content=flatbuffer).get_tensor_details()}
    assert max(ranks) <= 4


@pytest.fixture(scope="module")
def trained():
    """A tiny SegFormer trained briefly on synthetic shapes, with class weights so it does not predict
    background everywhere (int8 agreeing with a constant map would say nothing)."""
    keras.utils.set_random_seed(0)
    size = (48, 56)
    train = kseg.data.from_synthetic("train", num_images=48, size=size)
    model = kseg.models.get("segformer", train.num_classes, tiny=True)
    weights = [0.2] + [1.0] * (train.num_classes - 1)
    model.compile(keras.optimizers.Adam(3e-3), loss=kseg.losses.CrossEntropy(class_weights=weights))
    model.optimizer.build(model.trainable_variables)  # outside the traced step: ~10 s less tracing
    model.fit(kseg.data.pipeline(train, 8, size=size, training=True, scale_range=(0.8, 1.25)), epochs=40, verbose=0)
    return model, train, size


@requires_tensorflow
@pytest.mark.slow
def test_int8_and_int16x8_files_agree_with_the_float_model(trained, tmp_path):
    import kseg.runtime.evaluation
    from kseg import runtime
    from kseg.deploy import litert, modes

    model, train, size = trained
    val = kseg.data.from_synthetic("val", num_images=8, size=size)
    images = np.stack([x.astype("float32") for x, _ in val.examples.as_numpy_iterator()])
    labels = runtime.KerasPredictor(model).labels(images)
    assert np.bincount(labels.ravel()).max() < 0.9 * labels.size  # the float model is not a constant map
    artifact = modes.Artifact(size)
    paths = {mode: str(tmp_path / f"{mode}.tflite") for mode in ("float32", "int8", "int16x8")}
    for mode, path in paths.items():
        info = litert.to_litert(model, path, mode=mode, artifact=artifact, calibration=train, num_calibration=32)
        assert not any(op.startswith("FLEX") or op == "CUSTOM" for op in info["ops"])
    assert kseg.runtime.evaluation.agreement(paths["float32"], paths["int8"], val) >= 0.95  # 0.986-0.99 measured
    assert kseg.runtime.evaluation.agreement(paths["float32"], paths["int16x8"], val) >= 0.98  # 0.994 measured
    # The logits too, as tests/test_export.py compares every architecture's int8 file.
    want = keras.ops.convert_to_numpy(model(images[:1]))[0]
    got = runtime.LiteRTModel(paths["int8"]).logits(images[0])
    assert np.abs(got - want).mean() / (want.max() - want.min()) < 0.05
