"""MAC counts of hand-built models against hand computation, and a count for every registered model.

Backend-agnostic: runs under KERAS_BACKEND=tensorflow and jax alike.
"""

import keras
import pytest
from keras import layers

from kseg import complexity


def single_layer(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def test_conv2d_same_padding():
    model = single_layer(layers.Conv2D(8, 3, padding="same"), (16, 16, 3))
    assert complexity.count_macs(model) == 16 * 16 * (3 * 3) * 3 * 8


def test_strided_valid_conv_counts_output_positions():
    model = single_layer(layers.Conv2D(6, 5, strides=2), (21, 17, 4))
    out_h, out_w = (21 - 5) // 2 + 1, (17 - 5) // 2 + 1  # 9 x 7
    assert complexity.count_macs(model) == out_h * out_w * 25 * 4 * 6


def test_dilated_conv_is_nominal():
    same = single_layer(layers.Conv2D(4, 3, padding="same", dilation_rate=2), (10, 10, 2))
    assert complexity.count_macs(same) == 10 * 10 * 9 * 2 * 4
    # "valid": the effective kernel is 5x5, so 6x6 output positions, still 9 taps each.
    valid = single_layer(layers.Conv2D(4, 3, dilation_rate=2), (10, 10, 2))
    assert complexity.count_macs(valid) == 6 * 6 * 9 * 2 * 4


def test_grouped_conv():
    model = single_layer(layers.Conv2D(8, 3, padding="same", groups=4), (12, 12, 8))
    assert complexity.count_macs(model) == 12 * 12 * 9 * (8 // 4) * 8


def test_depthwise_conv():
    model = single_layer(layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2), (8, 8, 4))
    assert complexity.count_macs(model) == 8 * 8 * 9 * 4 * 2


def test_separable_conv():
    model = single_layer(layers.SeparableConv2D(16, 3, strides=2, padding="same"), (20, 20, 6))
    assert complexity.count_macs(model) == 10 * 10 * 9 * 6 + 10 * 10 * 6 * 16


def test_transposed_conv_counts_input_positions():
    model = single_layer(layers.Conv2DTranspose(5, 4, strides=2, padding="same"), (7, 7, 3))
    assert complexity.count_macs(model) == 7 * 7 * 16 * 3 * 5


def test_dense_on_feature_map():
    model = single_layer(layers.Dense(10), (4, 6, 32))
    assert complexity.count_macs(model) == 4 * 6 * 32 * 10


def test_any_size_model_nested_model_and_breakdown():
    inner_in = keras.Input((None, None, 8))
    inner = keras.Model(inner_in, layers.DepthwiseConv2D(3, padding="same", name="inner_dw")(inner_in), name="inner")
    pixels = keras.Input((None, None, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(pixels)
    x = layers.BatchNormalization()(x)
    x = inner(x)
    x = layers.UpSampling2D(2, interpolation="bilinear")(x)  # resizes are not counted
    logits = layers.Conv2D(2, 1, name="head")(x)
    model = keras.Model(pixels, logits)

    with pytest.raises(ValueError, match="input_size"):
        complexity.count_macs(model)
    report = complexity.complexity(model, (32, 48))
    stem, inner_dw, head = 16 * 24 * 9 * 3 * 8, 16 * 24 * 9 * 8, 32 * 48 * 8 * 2
    assert report.macs == stem + inner_dw + head
    assert report.by_type == {"Conv2D": stem + head, "DepthwiseConv2D": inner_dw}
    assert [layer.name for layer in report.top(3)] == ["stem", "inner_dw", "head"]
    assert report.gflops == pytest.approx(2 * report.macs / 1e9)
    assert complexity.count_macs(model, (64, 96)) == 4 * (stem + inner_dw + head)  # 4x the pixels
    assert "Conv2D" in report.table()
    # Counting leaves the model as it was: it still runs on any size.
    assert tuple(model(keras.ops.zeros((1, 10, 14, 3))).shape) == (1, 10, 14, 2)


def test_shared_layer_counts_every_call():
    shared = layers.Conv2D(4, 3, padding="same", name="shared")
    pixels = keras.Input((8, 8, 4))
    model = keras.Model(pixels, layers.Add()([shared(pixels), shared(shared(pixels))]))
    assert complexity.count_macs(model) == 3 * 8 * 8 * 9 * 4 * 4


def test_count_params():
    model = single_layer(layers.Conv2D(8, 3, padding="same"), (16, 16, 3))
    assert complexity.count_params(model) == 3 * 3 * 3 * 8 + 8 == model.count_params()


def test_fixed_size_model_refuses_another_size():
    model = single_layer(layers.Conv2D(2, 1), (16, 16, 3))
    with pytest.raises(ValueError, match="built for input"):
        complexity.count_macs(model, (32, 32))

