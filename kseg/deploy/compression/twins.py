"""tf_keras twins of kseg's own layers (`kseg.models.blocks`, `kseg.models.backbones`), for the bridge.

Importing `kseg.deploy.compression` registers them.
"""

import tensorflow as tf
import tf_keras

from kseg.deploy.compression.bridge import keras3_call_twin, register_quantize_config, register_twin
from kseg.deploy.compression.same_name import same_name_twin


class StaticResize(tf_keras.layers.Layer):
    """tf_keras twin of `kseg.models.custom_layers.ResizeLike` at a static size: resizes its input to `size`."""

    def __init__(self, size, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)
        self.interpolation = interpolation

    def call(self, x):
        return tf.image.resize(x, self.size, method=self.interpolation)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], *self.size, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": self.interpolation}


register_quantize_config(StaticResize)


@register_twin("ResizeLike")
def _resize_like_twin(layer, args, kwargs):
    x, reference = args[0]
    (height, width), size = tuple(x.shape[1:3]), tuple(reference.shape[1:3])
    if size[0] % height == 0 and size[1] % width == 0 and size[0] // height == size[1] // width > 1:
        # An integer upscale: the layer tfmot quantizes natively (and the one kseg builds at static sizes).
        twin = tf_keras.layers.UpSampling2D(size[0] // height, interpolation=layer.interpolation, name=layer.name)
    else:
        twin = StaticResize(size, layer.interpolation, name=layer.name)
    return twin, (x,), {}


@register_twin("CropLike")
def _crop_like_twin(layer, args, kwargs):
    x, reference = args[0]
    (height, width), (ref_height, ref_width) = tuple(x.shape[1:3]), tuple(reference.shape[1:3])
    return tf_keras.layers.Cropping2D(((0, height - ref_height), (0, width - ref_width)), name=layer.name), (x,), {}


register_twin("ReverseChannels")(keras3_call_twin)  # kseg.models.backbones: RGB -> BGR (REVERSE_V2)
register_twin("MaxUnpooling2D")(keras3_call_twin)  # kseg.models.blocks: SegNet's unpooling (builtins only)
register_twin("EfficientAttention")(keras3_call_twin)  # kseg.models.segformer: weightless attention (4-D at most)
register_twin("GELU")(keras3_call_twin)  # kseg.models.segformer: the exact GELU with Erf (ONNX), fused by LiteRT


@register_twin("LayerNormalization")
def _layer_norm_twin(layer, args, kwargs):
    """keras.layers.LayerNormalization and kseg.models.segformer's (written out for int16x8) become tf_keras's."""
    return same_name_twin(layer, args, kwargs, subclasses=True)


# tfmot has no QuantizeConfig for LayerNormalization (SegFormer's): its output is fake-quantized, gamma and beta
# stay float in the fine-tune and the int8 converter calibrates the ops it lowers to, as after training.
register_quantize_config("LayerNormalization")


@register_twin("BatchNormalization")
def _batch_norm_twin(layer, args, kwargs):
    """keras.layers.BatchNormalization and kseg's (which only trains faster) both become tf_keras's."""
    return same_name_twin(layer, args, kwargs, subclasses=True)


class HardActivation(tf_keras.layers.Layer):
    """tf_keras twin of a Keras 3 `Activation("hard_sigmoid" | "hard_swish")` (MobileNetV3's): tf_keras has no
    hard_swish and its hard_sigmoid is another function (slope 0.2, not Keras 3's relu6(x + 3) / 6), and
    tfmot quantizes neither `Activation`; this layer's output is fake-quantized (OutputQuantizeConfig)."""

    FUNCTIONS = {
        "hard_sigmoid": lambda x: tf.nn.relu6(x + 3.0) / 6.0,
        "hard_silu": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,  # Keras 3 saves hard_swish under this name
    }

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation

    def call(self, x):
        return self.FUNCTIONS[self.activation](x)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


register_quantize_config(HardActivation)


@register_twin("HardSwish")
def _hard_swish_twin(layer, args, kwargs):
    """kseg.models.custom_layers.HardSwish (MobileNetV3's, as kseg builds it)."""
    return HardActivation("hard_silu", name=layer.name), args, kwargs


@register_twin("Activation")
def _activation_twin(layer, args, kwargs):
    activation = layer.get_config()["activation"]
    if activation in HardActivation.FUNCTIONS:
        return HardActivation(activation, name=layer.name), args, kwargs
    return same_name_twin(layer, args, kwargs)


# tfmot 0.8.1 quantizes Add but not Multiply (MobileNetV3's squeeze-excite, LR-ASPP's gate): its output suffices.
register_quantize_config("Multiply")
