"""Building blocks shared by every kseg architecture.

Everything here is `keras.layers` / `keras.ops`, so the models run on TensorFlow and JAX alike.
Blocks are plain functions over functional-API tensors; the layers they need that Keras lacks are
`kseg.models.custom_layers`' (`resize_like` lets any architecture accept any input size, odd ones too, by
resizing to a reference tensor instead of assuming that every stride divides the input).
"""

import keras
from keras import layers

from kseg.errors import ArgumentError
from kseg.models.custom_layers import (
    BN_MOMENTUM,
    BatchNormalization,
    BilinearUpsampling,
    CropLike,
    ResizeLike,
    TorchResizeLike,
    spatial_size,
)


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


def torch_resize_like(x, reference, interpolation="nearest", align_corners=False, name=None):
    """Resizes `x` to `reference`'s spatial size as PyTorch's `F.interpolate` does (`TorchResizeLike`), for graphs
    that compute what a PyTorch model computes; a tensor that already has the size passes through untouched."""
    (h, w), (ref_h, ref_w) = spatial_size(x), spatial_size(reference)
    if None not in (h, w, ref_h, ref_w) and (h, w) == (ref_h, ref_w):
        return x
    return TorchResizeLike(interpolation, align_corners=align_corners, name=name)([x, reference])


NORMALIZATIONS = ("batch", "group", "layer", "none", None)


def normalization(kind, name, epsilon=1e-3):
    """A normalisation layer by name: "batch", "group" (8 groups), "layer" or None/"none"; `epsilon` is batch
    norm's (1e-3, Keras's; 1e-5 for PyTorch-trained weights)."""
    if kind in (None, "none"):
        return None
    if kind == "batch":
        return BatchNormalization(momentum=BN_MOMENTUM, epsilon=epsilon, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=8, name=name)
    if kind == "layer":
        return layers.LayerNormalization(name=name)
    raise ArgumentError(f"normalization must be one of {NORMALIZATIONS}, got {kind!r}")


def conv_bn_act(
    x,
    filters,
    kernel_size=3,
    strides=1,
    dilation_rate=1,
    activation="relu",
    norm="batch",
    name="conv",
    epsilon=1e-3,
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
    norm_layer = normalization(norm, f"{name}_bn", epsilon)
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
    x = BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=f"{name}_depthwise_bn")(x)
    x = layers.Activation(activation, name=f"{name}_depthwise_{activation}")(x)
    return conv_bn_act(x, filters, 1, activation=activation, name=f"{name}_pointwise")


def image_pooling(x, filters, name="image_pooling", epsilon=1e-3):
    """ASPP's image-level branch: global average -> 1x1 conv-BN-ReLU -> broadcast back to x's size."""
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_average")(x)
    pooled = conv_bn_act(pooled, filters, 1, name=name, epsilon=epsilon)
    return resize_like(pooled, x, name=f"{name}_resize")


def aspp(x, filters=256, rates=(6, 12, 18), separable=True, dropout=0.1, name="aspp", epsilon=1e-3):
    """Atrous Spatial Pyramid Pooling (Chen et al. 2017, DeepLabV3 section 3.3).

    A 1x1 branch, one 3x3 atrous branch per rate, and image pooling, concatenated and projected
    back to `filters` channels. `separable=True` uses atrous separable convolutions (DeepLabV3+);
    `epsilon` is the batch norms' (not separable ones').
    """
    branches = [conv_bn_act(x, filters, 1, name=f"{name}_1x1", epsilon=epsilon)]
    for rate in rates:
        branch_name = f"{name}_rate{rate}"
        if separable:
            branches.append(separable_conv_bn_act(x, filters, dilation_rate=rate, name=branch_name))
        else:
            branches.append(conv_bn_act(x, filters, 3, dilation_rate=rate, name=branch_name, epsilon=epsilon))
    branches.append(image_pooling(x, filters, name=f"{name}_pooling", epsilon=epsilon))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = conv_bn_act(x, filters, 1, name=f"{name}_projection", epsilon=epsilon)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def classifier(x, num_classes, name="classifier", kernel_size=1):
    """The final convolution to per-class logits, 1x1 unless told (float32 even under mixed precision)."""
    padding = "same" if kernel_size > 1 else "valid"  # a 1x1 one as before (its config unchanged)
    return layers.Conv2D(num_classes, kernel_size, padding=padding, dtype="float32", name=name)(x)


def pixel_input(input_shape, name="image"):
    """The model input: RGB pixels in [0, 255], any size when height/width are None.

    kseg models normalise inside the graph, so the same uint8 pixels feed Keras, a float .tflite
    and a full-integer .tflite alike.
    """
    if len(input_shape) != 3:
        raise ArgumentError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape=tuple(input_shape), name=name)


def crop_like(x, reference, name=None):
    """`x` cropped to `reference`'s size; a no-op (no layer) when the static sizes already agree."""
    if None not in spatial_size(x) and spatial_size(x) == spatial_size(reference):
        return x
    return CropLike(name=name)([x, reference])


def learned_upsampling(x, filters, factor, name):
    """FCN's learned upsampling: a transposed convolution with a 2*factor kernel, bilinear at start."""
    return layers.Conv2DTranspose(
        filters, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=name,
    )(x)


def residual_conv_unit(x, filters, name):
    """RefineNet's RCU (Lin et al. 2017, figure 3b): ReLU-conv3x3-ReLU-conv3x3 plus the input, no BN."""
    shortcut = x
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def chained_residual_pooling(x, filters, stages=2, name="crp"):
    """RefineNet's chained residual pooling (figure 3d): ReLU, then a chain of 5x5 max pool (stride 1)
    and 3x3 conv whose every output is added back, capturing context from growing windows."""
    x = layers.ReLU(name=f"{name}_relu")(x)
    path, total = x, x
    for i in range(stages):
        path = layers.MaxPooling2D(5, strides=1, padding="same", name=f"{name}_pool{i}")(path)
        path = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(path)
        total = layers.Add(name=f"{name}_add{i}")([total, path])
    return total
