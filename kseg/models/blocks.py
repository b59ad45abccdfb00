"""Building blocks shared by every kseg architecture.

Everything here is `keras.layers` / `keras.ops`, so the models run on TensorFlow, JAX and PyTorch.
Blocks are plain functions over functional-API tensors; the only custom layer is `ResizeLike`,
which lets any architecture accept any input size (odd ones too) by resizing to a reference tensor
instead of assuming that every stride divides the input.
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kseg")
class ResizeLike(layers.Layer):
    """Resizes `x` to the spatial size of `reference`: `ResizeLike()([x, reference])`.

    Works with static and dynamic (None) sizes. Channels-last.
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        height, width = ops.shape(reference)[1:3]
        if isinstance(height, int) and isinstance(width, int):
            return ops.image.resize(x, (height, width), interpolation=self.interpolation, data_format="channels_last")
        # Symbolic sizes only arise in TensorFlow graphs (JAX and PyTorch trace with concrete shapes),
        # and keras.ops.image.resize wants Python ints.
        import tensorflow as tf

        return tf.image.resize(x, tf.stack([height, width]), method=self.interpolation)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


def spatial_size(x):
    """Static (height, width) of a channels-last tensor; entries are None when unknown."""
    return tuple(x.shape[1:3])


def resize_like(x, reference, interpolation="bilinear", name=None):
    """Resizes `x` to `reference`'s spatial size with the cheapest layer that does it exactly.

    An integer upscale of a statically known size becomes `UpSampling2D` (a plain RESIZE op in LiteRT
    and a layer tensorflow-model-optimization can quantize); anything else becomes `ResizeLike`.
    A tensor that already has the size passes through untouched.
    """
    (h, w), (ref_h, ref_w) = spatial_size(x), spatial_size(reference)
    if None not in (h, w, ref_h, ref_w):
        if (h, w) == (ref_h, ref_w):
            return x
        if ref_h % h == 0 and ref_w % w == 0 and ref_h // h == ref_w // w:
            return layers.UpSampling2D(ref_h // h, interpolation=interpolation, name=name)(x)
    return ResizeLike(interpolation, name=name)([x, reference])


# Moving-statistics momentum of every BatchNormalization in kseg. keras.applications uses 0.999, tuned
# for long ImageNet runs; short runs (fine-tuning, training from scratch) need statistics that follow
# the weights within tens of steps, or inference-mode predictions lag far behind training-mode ones.
# 0.9 is PyTorch's default (its momentum=0.1).
BN_MOMENTUM = 0.9


def normalization(kind, name):
    """A normalisation layer by name: "batch", "group" (8 groups), "layer" or None/"none"."""
    if kind in (None, "none"):
        return None
    if kind == "batch":
        return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=8, name=name)
    if kind == "layer":
        return layers.LayerNormalization(name=name)
    raise ValueError(f"normalization must be 'batch', 'group', 'layer' or 'none', got {kind!r}")


def conv_bn_act(
    x,
    filters,
    kernel_size=3,
    strides=1,
    dilation_rate=1,
    activation="relu",
    norm="batch",
    name="conv",
):
    """Conv2D (no bias when normalised) -> normalisation -> activation.

    The order Conv -> BN -> activation is the one converters fold into a single fused op and the one
    tensorflow-model-optimization can quantize.
    """
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=norm in (None, "none"),
        name=f"{name}_conv",
    )(x)
    norm_layer = normalization(norm, f"{name}_bn")
    if norm_layer is not None:
        x = norm_layer(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def separable_conv_bn_act(x, filters, kernel_size=3, dilation_rate=1, activation="relu", name="sepconv"):
    """Depthwise conv -> BN -> act -> pointwise conv -> BN -> act (the DeepLabV3+ atrous separable conv)."""
    x = layers.DepthwiseConv2D(
        kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=f"{name}_depthwise_bn")(x)
    x = layers.Activation(activation, name=f"{name}_depthwise_{activation}")(x)
    return conv_bn_act(x, filters, 1, activation=activation, name=f"{name}_pointwise")


def image_pooling(x, filters, name="image_pooling"):
    """ASPP's image-level branch: global average -> 1x1 conv-BN-ReLU -> broadcast back to x's size."""
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_average")(x)
    pooled = conv_bn_act(pooled, filters, 1, name=name)
    return resize_like(pooled, x, name=f"{name}_resize")


def aspp(x, filters=256, rates=(6, 12, 18), separable=True, dropout=0.1, name="aspp"):
    """Atrous Spatial Pyramid Pooling (Chen et al. 2017, DeepLabV3 section 3.3).

    A 1x1 branch, one 3x3 atrous branch per rate, and image pooling, concatenated and projected
    back to `filters` channels. `separable=True` uses atrous separable convolutions (DeepLabV3+).
    """
    branches = [conv_bn_act(x, filters, 1, name=f"{name}_1x1")]
    for rate in rates:
        branch_name = f"{name}_rate{rate}"
        if separable:
            branches.append(separable_conv_bn_act(x, filters, dilation_rate=rate, name=branch_name))
        else:
            branches.append(conv_bn_act(x, filters, 3, dilation_rate=rate, name=branch_name))
    branches.append(image_pooling(x, filters, name=f"{name}_pooling"))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = conv_bn_act(x, filters, 1, name=f"{name}_projection")
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def classifier(x, num_classes, name="classifier"):
    """The final 1x1 convolution to per-class logits (float32 even under mixed precision)."""
    return layers.Conv2D(num_classes, 1, dtype="float32", name=name)(x)


def pixel_input(input_shape, name="image"):
    """The model input: RGB pixels in [0, 255], any size when height/width are None.

    kseg models normalise inside the graph, so the same uint8 pixels feed Keras, a float .tflite
    and a full-integer .tflite alike.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape=tuple(input_shape), name=name)
