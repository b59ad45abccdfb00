"""Building blocks shared by every kseg architecture.

Everything here is `keras.layers` / `keras.ops`, so the models run on TensorFlow, JAX and PyTorch.
Blocks are plain functions over functional-API tensors; the only custom layer is `ResizeLike`,
which lets any architecture accept any input size (odd ones too) by resizing to a reference tensor
instead of assuming that every stride divides the input.
"""

import keras
from keras import layers, ops

from kseg.errors import ArgumentError


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


@keras.saving.register_keras_serializable(package="kseg")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (same arguments, weights and results) whose training step on
    TensorFlow runs TensorFlow's fused kernel: Keras 3 computes batch moments and the normalisation
    as separate ops, about a third of a training step's op time in kseg's convolutional models.
    Inference, other backends and the options the kernel lacks (masks, renorm, synchronized) take
    the Keras path, so exported graphs do not change."""

    def call(self, inputs, training=None, mask=None):
        fusable = (training and self.trainable and mask is None and not self.renorm and not self.synchronized
                   and len(inputs.shape) == 4 and self.axis in (-1, 3) and keras.backend.backend() == "tensorflow")
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the unbiased batch variance; Keras averages the biased one.
        count = tf.cast(tf.size(x) // channels, "float32")
        variance = variance * tf.maximum(count - 1.0, 0.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


NORMALIZATIONS = ("batch", "group", "layer", "none", None)


def normalization(kind, name):
    """A normalisation layer by name: "batch", "group" (8 groups), "layer" or None/"none"."""
    if kind in (None, "none"):
        return None
    if kind == "batch":
        return BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=name)
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
    x = BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=f"{name}_depthwise_bn")(x)
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
        raise ArgumentError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape=tuple(input_shape), name=name)


@keras.saving.register_keras_serializable(package="kseg")
class CropLike(layers.Layer):
    """Crops `x` to the spatial size of `reference`, keeping the top-left corner: `CropLike()([x, ref])`.

    FCN's learned upsampling overshoots odd sizes by a few pixels (ceil(h / 32) * 32 >= h); cropping,
    unlike resizing, keeps the transposed convolution's alignment.
    """

    def call(self, inputs):
        x, reference = inputs
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        return x[:, :height, :width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[-1])


def crop_like(x, reference, name=None):
    """`x` cropped to `reference`'s size; a no-op (no layer) when the static sizes already agree."""
    if None not in spatial_size(x) and spatial_size(x) == spatial_size(reference):
        return x
    return CropLike(name=name)([x, reference])


@keras.saving.register_keras_serializable(package="kseg")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a `Conv2DTranspose` kernel (k, k, channels, channels) to per-channel bilinear
    interpolation, as FCN does (Long et al. 2015, section 3.3); training may then refine it."""

    def __call__(self, shape, dtype=None):
        size, _, out_channels, in_channels = shape
        factor = (size + 1) // 2
        center = factor - 1 if size % 2 == 1 else factor - 0.5
        ramp = 1 - ops.abs(ops.arange(size, dtype="float32") - center) / factor
        kernel2d = ops.outer(ramp, ramp)
        eye = ops.eye(out_channels, in_channels, dtype="float32")
        return ops.cast(kernel2d[:, :, None, None] * eye[None, None], dtype or "float32")


def learned_upsampling(x, filters, factor, name):
    """FCN's learned upsampling: a transposed convolution with a 2*factor kernel, bilinear at start."""
    return layers.Conv2DTranspose(
        filters, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=name,
    )(x)


@keras.saving.register_keras_serializable(package="kseg")
class MaxUnpooling2D(layers.Layer):
    """SegNet's unpooling: `MaxUnpooling2D()([x, before_pool])` places each value of `x` at the
    position of its 2x2 window where the encoder's max pool found the maximum, zeros elsewhere.

    `tf.nn.max_pool_with_argmax` is no LiteRT builtin, so the pooling indices are recomputed from the
    tensor before pooling: an ARG_MAX over each window's four positions (first maximum wins, as in
    argmax pooling), compared with the position numbers as integers, so int8 rounding cannot make
    two positions win. Lowers to builtins only (ARG_MAX, EQUAL, MUL, RESHAPE, TRANSPOSE).
    """

    def call(self, inputs):
        x, before_pool = inputs
        batch, height, width, channels = (ops.shape(before_pool)[i] for i in range(4))
        pooled_height, pooled_width = ops.shape(x)[1], ops.shape(x)[2]
        # "Same" pooling of an odd size pads the bottom/right; mirroring the last row/column there
        # means a padded position can tie with the maximum only after its real twin.
        pad_rows, pad_columns = 2 * pooled_height - height, 2 * pooled_width - width
        padded = ops.pad(before_pool, [[0, 0], [0, pad_rows], [0, pad_columns], [0, 0]], mode="symmetric")
        windows = ops.reshape(padded, (batch, pooled_height, 2, pooled_width, 2, channels))
        windows = ops.transpose(windows, (0, 1, 3, 2, 4, 5))
        windows = ops.reshape(windows, (batch, pooled_height * pooled_width, 4, channels))
        winner = ops.expand_dims(_argmax(windows, axis=2), 2)
        positions = ops.reshape(ops.arange(4, dtype=winner.dtype), (1, 1, 4, 1))
        mask = ops.cast(ops.equal(winner, positions), x.dtype)
        values = mask * ops.reshape(x, (batch, pooled_height * pooled_width, 1, channels))
        values = ops.reshape(values, (batch, pooled_height, pooled_width, 2, 2, channels))
        values = ops.transpose(values, (0, 1, 3, 2, 4, 5))
        values = ops.reshape(values, (batch, 2 * pooled_height, 2 * pooled_width, channels))
        return values[:, :height, :width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, before_shape = input_shapes
        return (x_shape[0], before_shape[1], before_shape[2], x_shape[-1])


def _argmax(x, axis):
    # keras.ops.argmax wraps TensorFlow's in a -0.0 fix made of bitwise ops, which LiteRT lacks.
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.argmax(x, axis=axis, output_type="int32")
    return ops.argmax(x, axis=axis)


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
