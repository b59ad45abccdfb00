"""What each architecture adds beyond the registry-wide tests: its own blocks, options and paper sizes."""

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.models import custom_layers


def _unpool_reference(x, before):
    """SegNet unpooling with argmax pooling indices (first maximum of each 2x2 window), in NumPy."""
    out = np.zeros((*before.shape[:3], x.shape[-1]), x.dtype)
    for n, i, j, c in np.ndindex(*x.shape):
        window = before[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        di, dj = np.unravel_index(window.argmax(), window.shape)
        out[n, 2 * i + di, 2 * j + dj, c] = x[n, i, j, c]
    return out


@pytest.mark.parametrize("size", [(6, 8), (7, 9)])
def test_max_unpooling_puts_values_where_the_maxima_were(size):
    rng = np.random.default_rng(0)
    before = rng.integers(0, 4, (2, *size, 3)).astype("float32")  # small integers: many ties
    pooled = keras.layers.MaxPooling2D(2, padding="same")(before)
    x = rng.normal(size=tuple(pooled.shape)).astype("float32")
    layer = custom_layers.MaxUnpooling2D.from_config(custom_layers.MaxUnpooling2D(name="unpool").get_config())
    got = keras.ops.convert_to_numpy(layer([x, before]))
    np.testing.assert_array_equal(got, _unpool_reference(x, before))


def test_bilinear_initializer_upsamples_like_bilinear_interpolation():
    x = np.arange(6 * 6, dtype="float32").reshape(1, 6, 6, 1)  # a ramp: bilinear keeps it linear
    layer = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=custom_layers.BilinearUpsampling())
    y = keras.ops.convert_to_numpy(layer(x))[0, 2:-2, 2:-2, 0]  # borders see zero padding
    steps = np.diff(y, axis=1)
    np.testing.assert_allclose(steps, np.full_like(steps, 0.5), atol=1e-5)
    assert keras.initializers.get(keras.initializers.serialize(custom_layers.BilinearUpsampling())).__class__ \
        is custom_layers.BilinearUpsampling



@requires_tensorflow
def test_segnet_files_of_even_sizes_have_no_mirror_pad():
    """The unpooling pads odd sizes by mirroring; at an exported file's even size it pads nothing, and the file has
    no MIRROR_PAD (LiteRT runs it on its reference kernel, zero padding or not: a third of SegNet's int8 call)."""
    from kseg.deploy import litert, litert_graph, modes

    model = kseg.models.get("segnet", 3, tiny=True)
    ops = {size: {op.name for op in litert_graph.ops(litert.litert_flatbuffer(
        model, mode="float32", artifact=modes.Artifact(size)))} for size in ((32, 32), (30, 34))}
    assert "MIRROR_PAD" not in ops[(32, 32)]
    assert "MIRROR_PAD" in ops[(30, 34)]  # 30 / 2 = 15, odd: the next unpooling pads

@pytest.mark.parametrize("name, skips", [("fcn32s", []), ("fcn16s", [16]), ("fcn8s", [16, 8])])
def test_fcn_variants_fuse_their_skips(name, skips):
    model = kseg.models.get(name, 3, tiny=True)
    fused = sorted((int(layer.name.removeprefix("score_pool")) for layer in model.layers
                    if layer.name.startswith("score_pool")), reverse=True)
    assert fused == skips
    assert isinstance(model.get_layer("upscore_final"), keras.layers.Conv2DTranspose)


def test_segnet_decoder_unpools_five_times_sparsely():
    model = kseg.models.get("segnet", 3, tiny=True)
    unpools = [layer for layer in model.layers if isinstance(layer, custom_layers.MaxUnpooling2D)]
    assert len(unpools) == 5
    probe = keras.Model(model.input, unpools[-1].output)
    out = keras.ops.convert_to_numpy(probe(np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3))))
    windows = out.reshape(1, 16, 2, 16, 2, -1).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert ((windows != 0).sum(-1) <= 1).all()  # at most one value per 2x2 window


def test_unet_with_a_registry_backbone_encoder():
    model = kseg.models.unet(3, filters=4, backbone="mobilenetv2", backbone_kwargs={"alpha": 0.35})
    assert tuple(model(np.zeros((1, 61, 83, 3), "float32")).shape) == (1, 61, 83, 3)
    assert model.get_layer("block_13_expand")  # the MobileNetV2 encoder, by its keras.applications names


def test_refinenet_refinement_path_has_no_batch_norm():
    model = kseg.models.get("refinenet", 3, tiny=True)
    refine = [layer for layer in model.layers if layer.name.startswith(("refine", "head"))]
    assert refine and not any(isinstance(layer, keras.layers.BatchNormalization) for layer in refine)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in refine) == 4 * 2  # CRP per block


def test_deeplabv3_output_stride_sets_the_dilation():
    for output_stride, rate in ((8, 4), (16, 2)):
        model = kseg.models.deeplabv3(3, output_stride=output_stride, backbone="mobilenetv2",
                                      backbone_kwargs={"alpha": 0.35}, aspp_filters=8)
        assert model.get_layer("block_16_depthwise").dilation_rate == (rate, rate)
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16\), got 32"):
        kseg.models.deeplabv3(3, output_stride=32)


# Parameters for 21 classes next to the papers' (or reference implementations') counts.
PAPER_PARAMETERS = [
    ("segnet", {}, 29.5e6),  # SegNet paper, table 6 (VGG16 encoder-decoder: 29.5 M)
    ("fcn8s", {}, 134.3e6),  # torchvision-era FCN-8s VGG16 (caffe model: 134 M)
    ("deeplabv3", {}, 39.6e6),  # torchvision deeplabv3_resnet50 without its auxiliary head
    ("refinenet", {"pooling_stages": 4}, 118.1e6),  # RefineNet-101 as released (Nekrasov et al. 2018: 118 M)
]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="counts do not depend on the backend; the TensorFlow run checks them")
@pytest.mark.parametrize("name, kwargs, expected", PAPER_PARAMETERS)
def test_parameter_counts_match_the_papers(name, kwargs, expected):
    count = kseg.models.get(name, 21, **kwargs).count_params()
    assert abs(count - expected) / expected < 0.03, f"{name}: {count / 1e6:.2f} M, expected {expected / 1e6:.1f} M"


def test_kseg_batch_norm_trains_exactly_like_keras():
    """kseg's BatchNormalization (TensorFlow's fused kernel in training) matches Keras's: outputs,
    moving statistics, gradients, and a .keras round trip."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 9, 11, 5)).astype("float32")
    reference, fused = keras.layers.BatchNormalization(momentum=0.9), custom_layers.BatchNormalization(momentum=0.9)
    for layer in (reference, fused):
        layer.build(x.shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    weights[3] = np.abs(weights[3])
    reference.set_weights(weights)
    fused.set_weights(weights)
    for a, b in [(reference(x, training=True), fused(x, training=True)), (reference(x), fused(x))]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5)
    for a, b in zip(reference.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        grads = []
        for layer in (reference, fused):
            with tf.GradientTape() as tape:
                inputs = tf.constant(x)
                tape.watch(inputs)
                loss = tf.reduce_sum(layer(inputs, training=True) ** 2)
            grads.append(tape.gradient(loss, [inputs, *layer.trainable_weights]))
        for a, b in zip(*grads):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    model = kseg.models.get("unet", 2, tiny=True)
    assert any(type(layer) is custom_layers.BatchNormalization for layer in model.layers)
