"""kseg's own Keras layers: what `keras.layers` lacks for segmentation that runs at any input size and converts
to builtins-only LiteRT. Each is registered for `.keras` files and has `get_config`.

- `ResizeLike`: resize to a reference tensor's size (any input size, odd ones too, with no divisibility assumed).
- `TorchResizeLike`: the same, computed as PyTorch's `F.interpolate` computes it (converted PyTorch models).
- `CropLike`: crop to a reference tensor's size (FCN's score maps after learned upsampling).
- `BatchNormalization`: Keras's, trained faster.
- `BilinearUpsampling`: an initializer that starts a transposed convolution as bilinear upsampling (FCN).
- `MaxUnpooling2D`: SegNet's unpooling by pooling indices, without the argmax op LiteRT lacks.
- `HardSwish`: MobileNetV3's activation, in a form whose int8 LiteRT ops XNNPACK runs.

    up = kseg.models.custom_layers.ResizeLike(name="up")([low_resolution, reference])
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


@keras.saving.register_keras_serializable(package="kseg")
class TorchResizeLike(layers.Layer):
    """Resizes `x` to `reference`'s spatial size as PyTorch's `F.interpolate(x, size=..., mode=interpolation,
    align_corners=align_corners)` does (aten/src/ATen/native/UpSample.h), for graphs converted from PyTorch:
    "nearest" picks source index floor(i * in / out) (torch's legacy nearest, not Keras's half-pixel one: they
    differ where out / in is no integer); "bilinear" samples at (i + 0.5) * in / out - 0.5, or at
    i * (in - 1) / (out - 1) with `align_corners=True` (which `ops.image.resize` lacks). One gather per axis (and
    a blend for bilinear), static or dynamic sizes, any backend. Channels-last.

        up = TorchResizeLike("bilinear", align_corners=True, name="up")([x, reference])
    """

    def __init__(self, interpolation="nearest", align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.interpolation, self.align_corners = interpolation, align_corners

    def call(self, inputs):
        x, reference = inputs
        x = _torch_resize_axis(x, ops.shape(reference)[1], 1, self.interpolation, self.align_corners)
        return _torch_resize_axis(x, ops.shape(reference)[2], 2, self.interpolation, self.align_corners)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation, "align_corners": self.align_corners}


def _torch_resize_axis(x, size, axis, interpolation, align_corners):
    """`x` resized along `axis` to `size` with torch's source coordinates, in float32 as torch computes them."""
    in_size = ops.shape(x)[axis]
    target = ops.cast(ops.arange(size), "float32")
    in_float, out_float = ops.cast(in_size, "float32"), ops.cast(size, "float32")
    if interpolation == "nearest":
        return ops.take(x, ops.minimum(ops.cast(ops.floor(target * (in_float / out_float)), "int32"), in_size - 1),
                        axis=axis)
    if align_corners:
        source = target * ((in_float - 1.0) / ops.maximum(out_float - 1.0, 1.0))
    else:
        source = ops.maximum((target + 0.5) * (in_float / out_float) - 0.5, 0.0)
    low = ops.cast(ops.floor(source), "int32")
    weight = ops.reshape(source - ops.cast(low, "float32"), [-1 if i == axis else 1 for i in range(4)])
    below, above = ops.take(x, low, axis=axis), ops.take(x, ops.minimum(low + 1, in_size - 1), axis=axis)
    return below * ops.cast(1.0 - weight, x.dtype) + above * ops.cast(weight, x.dtype)


def spatial_size(x):
    """Static (height, width) of a channels-last tensor; entries are None when unknown."""
    return tuple(x.shape[1:3])


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


@keras.saving.register_keras_serializable(package="kseg")
class HardSwish(layers.Layer):
    """hard-swish, x * relu6(x + 3) / 6 (Howard et al. 2019, arXiv:1905.02244), the same function as
    `keras.layers.Activation("hard_swish")`, computed as (x / 6) * relu6(x + 3).

    Why not Keras's: the converter fuses x * relu6(x + 3) / 6 into one HARD_SWISH op, which XNNPACK (LiteRT's
    CPU runtime) does not take in int8, and LiteRT's own int8 kernel is slow: measured on 2 cores, 7.5 ms per
    256x256x32 tensor, 68% of LR-ASPP MobileNetV3-Large's int8 time at 512x512. In this order the converter
    leaves MUL, ADD + RELU6 and MUL, all in XNNPACK (that model's four hard-swishes: 34 -> 5.5 ms) and on
    phone GPU delegates; float files are unchanged in value.

        y = kseg.models.custom_layers.HardSwish(name="act")(x)
    """

    def call(self, x):
        return (x * (1.0 / 6.0)) * ops.relu6(x + 3.0)

    def compute_output_shape(self, input_shape):
        return input_shape


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
        # means a padded position can tie with the maximum only after its real twin. Sizes known to be even
        # (an exported file's) need no pad: LiteRT's MIRROR_PAD runs on its reference kernel, even padding 0.
        pad_rows, pad_columns = 2 * pooled_height - height, 2 * pooled_width - width
        even = None not in (*x.shape[1:3], *before_pool.shape[1:3]) and tuple(before_pool.shape[1:3]) == (
            2 * x.shape[1], 2 * x.shape[2])
        padded = before_pool if even else ops.pad(
            before_pool, [[0, 0], [0, pad_rows], [0, pad_columns], [0, 0]], mode="symmetric")
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
