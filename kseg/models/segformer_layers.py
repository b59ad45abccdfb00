"""The weightless layers of kseg's SegFormer (`kseg.models.segformer`): its multi-head attention, a LayerNormalization
computed in PyTorch's order, and GELU written out (exact, or tanh-approximated as keras-hub's MiT computes it,
keras_hub/src/models/mit/mit_layers.py `MixFFN`: `ops.nn.gelu`, whose default is approximate=True).

    mixed = EfficientAttention(2)([query, key, value])   # (batch, height, width, channels) each, 4-D at most
    y = GELU(approximate=True)(x)

They are registered under package "kseg" by class name, so saved models load whichever module defines them.
"""

import math
import warnings

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kseg")
class EfficientAttention(layers.Layer):
    """Multi-head scaled dot-product attention of SegFormer: `EfficientAttention(heads)([query, key, value])`.

    `query` is (batch, height, width, channels); `key` and `value` are (batch, h, w, channels) at the
    reduced size. Returns softmax(q k^T / sqrt(d)) v per head as (batch, height, width, channels).
    No weights (the projections are the model's 1x1 convolutions); at most 4-D tensors.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def call(self, inputs):
        query, key, value = inputs
        channels = query.shape[-1]
        heads, width = self.num_heads, channels // self.num_heads
        batch, height, wide = ops.shape(query)[0], ops.shape(query)[1], ops.shape(query)[2]
        query = self._split(query * (1.0 / math.sqrt(width)), batch)  # (batch, heads, tokens, width)
        key = self._split(key, batch)
        value = self._split(value, batch)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))  # (batch, heads, tokens, keys)
        with warnings.catch_warnings():  # one key (tiny maps): Keras warns that the softmax is 1, as it should be
            warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            weights = ops.softmax(scores, axis=-1)
        mixed = ops.matmul(weights, value)  # (batch, heads, tokens, width)
        if heads > 1:
            mixed = ops.transpose(mixed, (0, 2, 1, 3))
        return ops.reshape(mixed, (batch, height, wide, channels))

    def _split(self, x, batch):
        heads = self.num_heads
        if heads == 1:
            return ops.reshape(x, (batch, 1, -1, x.shape[-1]))
        x = ops.reshape(x, (batch, -1, heads, x.shape[-1] // heads))
        return ops.transpose(x, (0, 2, 1, 3))

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def macs(self, input_shapes, output_shape):
        """Multiply-accumulates of the two products (q k^T and the weighted sum): 2 * tokens * keys * channels."""
        (batch, height, width, channels), (_, key_height, key_width, _) = input_shapes[0], input_shapes[1]
        return 2 * batch * height * width * key_height * key_width * channels

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="kseg")
class LayerNormalization(layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (same arguments, weights and results) computed in PyTorch's order over
    the last axis: ((x - mean) / sqrt(variance + epsilon)) * gamma + beta.

    Keras's own order, x * (gamma / sigma) + (beta - mean * gamma / sigma), lowers to a NEG that LiteRT's
    int16x8 quantizer refuses, and a squared difference (also what `ops.square(x - mean)` becomes) that its
    int16 runtime refuses. This one lowers to MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD (builtins that
    every LiteRT mode and the GPU delegate run) and quantizes the normalised map, bounded by sqrt(channels),
    before the per-channel gamma and beta. Other axes and RMS scaling take Keras's path.
    """

    def call(self, inputs):
        rank = len(inputs.shape)
        if self.rms_scaling or [axis % rank for axis in self.axis] != [rank - 1]:
            return super().call(inputs)
        x = ops.cast(inputs, "float32")
        centred = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(centred * centred, axis=-1, keepdims=True)
        outputs = centred * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.cast(self.gamma, "float32")
        if self.center:
            outputs = outputs + ops.cast(self.beta, "float32")
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="kseg")
class GELU(layers.Layer):
    """The exact (erf) GELU, 0.5 x (1 + erf(x / sqrt(2))): `keras.activations.gelu`'s function, written so that
    TensorFlow traces an Erf (tf2onnx converts it; TensorFlow's own gelu traces an Erfc, which it cannot).
    LiteRT's converter fuses it into one GELU op, as it does TensorFlow's.

    `approximate=True`: the tanh approximation 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), what
    `keras.ops.nn.gelu` computes by default (and so keras-hub's MiT, keras_hub/src/models/mit/mit_layers.py).

        y = GELU(approximate=True)(keras.ops.ones((1, 4, 4, 8)))
    """

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x):
        if self.approximate:
            return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))
        return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}
