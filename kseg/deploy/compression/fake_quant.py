"""Fake quantization in Keras 3: TensorFlow's converter's full-int8 scheme simulated in a model's forward pass.

The scheme (Jacob et al. 2018, arXiv:1712.05877; per-channel weights and batch-norm folding: Krishnamoorthi 2018,
arXiv:1806.08342), as `kseg.deploy.litert`'s "int8" mode writes it:

- weights int8, symmetric, per output channel (Conv2D: per filter; DepthwiseConv2D: per channel; Dense: per unit),
  levels -127..127 times max|w| / 127, rounded AFTER the batch norm that follows is folded in:
  w * gamma / sqrt(var + eps) per channel, bias (b - mean) * gamma / sqrt(var + eps) + beta (`FoldedConv2D`...);
- activations int8, asymmetric, one range per tensor from calibration (min and max over the calibration images,
  extended to hold 0), at the tensors the file stores: conv outputs after a fused ReLU/ReLU6, adds, concats,
  resizes, poolings, logits... (`ActivationFakeQuant`); not between a conv and its folded batch norm or fused ReLU.

Gradients pass straight through the rounding (Bengio et al. 2013), and are zero where an activation is clipped.

    images = kseg.deploy.litert.calibration_images(train, (128, 128), 100)
    simulated, record = kseg.deploy.compression.fake_quant.simulate(model, images=images)
    simulated(images[0])          # what the int8 file computes, in float
    float_twin, _ = kseg.deploy.compression.fake_quant.simulate(model, quantize=False)  # == model, BN folded
"""

import keras
import numpy as np
from keras import ops

FUSABLE = {"relu", "relu6"}  # activations TensorFlow's converter fuses into the op before them
PASS_THROUGH = ("InputLayer", "Dropout", "SpatialDropout2D", "Identity", "Reshape", "Flatten", "Permute",
                "ZeroPadding2D", "Cropping2D", "MaxPooling2D", "GlobalMaxPooling2D", "CropLike")


def symmetric_per_channel(kernel, bits=8, axes=(0, 1, 2)):
    """`kernel` on the symmetric `bits`-bit grid of each channel (reducing over `axes`): levels -(2^(b-1) - 1) ..
    2^(b-1) - 1 times max|w| / that; straight-through gradient."""
    levels = 2 ** (bits - 1) - 1
    scale = ops.maximum(ops.max(ops.abs(kernel), axis=axes, keepdims=True), 1e-9) / levels
    rounded = ops.clip(ops.round(kernel / scale), -levels, levels) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def activation_grid(low: float, high: float, bits: int = 8) -> tuple[float, float, float]:
    """(scale, lowest, highest value) of the asymmetric int grid TensorFlow's converter gives a tensor whose
    calibrated range is [low, high]: the range extended to hold 0, a zero point rounded to an integer."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / (qmax - qmin), 1e-9)
    zero = float(np.clip(np.round(qmin - low / scale), qmin, qmax))
    return scale, (qmin - zero) * scale, (qmax - zero) * scale


@keras.saving.register_keras_serializable(package="kseg")
class ActivationFakeQuant(keras.layers.Layer):
    """A tensor on the int8 grid of its calibrated range [low, high] (`activation_grid`); straight-through
    gradient inside the range, zero outside.

        layer = ActivationFakeQuant(low=-1.5, high=6.0)
    """

    def __init__(self, low=0.0, high=0.0, bits=8, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high, self.bits = float(low), float(high), int(bits)
        self.scale, self.lowest, self.highest = activation_grid(self.low, self.high, self.bits)

    def call(self, inputs):
        clipped = ops.clip(inputs, self.lowest, self.highest)
        rounded = ops.round(clipped / self.scale) * self.scale
        return clipped + ops.stop_gradient(rounded - clipped)

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high, "bits": self.bits}


class _Folding:
    """What the folded layers share: the batch norm's statistics (frozen), folding and per-channel rounding."""

    def __init__(self, fold_batch_norm=False, epsilon=1e-3, quantize=True, **kwargs):
        super().__init__(**kwargs)
        self.fold_batch_norm, self.epsilon, self.quantize = bool(fold_batch_norm), float(epsilon), bool(quantize)

    def build(self, input_shape):
        super().build(input_shape)
        if self.fold_batch_norm:
            for name, value in (("bn_gamma", "ones"), ("bn_beta", "zeros"), ("bn_mean", "zeros"),
                                ("bn_variance", "ones")):
                setattr(self, name, self.add_weight(name=name, shape=(self._channels(input_shape),),
                                                    initializer=value, trainable=False))

    def _folded(self, kernel, channel_shape, axes):
        """(kernel, bias) with the batch norm folded in (per channel, reshaped to `channel_shape` on the
        kernel), the kernel rounded per channel over `axes` when quantizing; bias None when there is none."""
        bias = self.bias if self.use_bias else None
        if self.fold_batch_norm:
            factor = self.bn_gamma / ops.sqrt(self.bn_variance + self.epsilon)
            kernel = kernel * ops.reshape(factor, channel_shape)
            bias = ((0.0 if bias is None else bias) - self.bn_mean) * factor + self.bn_beta
        if self.quantize:
            kernel = symmetric_per_channel(kernel, 8, axes)
        return kernel, bias

    def _finish(self, outputs, bias):
        if bias is not None:
            outputs = ops.add(outputs, ops.reshape(bias, (1,) * (len(outputs.shape) - 1) + (-1,)))
        return outputs if self.activation is None else self.activation(outputs)

    def save_own_variables(self, store):  # every variable (Conv2D and Dense save kernel and bias only)
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        return {**super().get_config(), "fold_batch_norm": self.fold_batch_norm, "epsilon": self.epsilon,
                "quantize": self.quantize}


@keras.saving.register_keras_serializable(package="kseg")
class FoldedConv2D(_Folding, keras.layers.Conv2D):
    """A Conv2D with the batch norm after it folded in and its kernel rounded per output channel (int8).

        layer = FoldedConv2D(filters=16, kernel_size=3, fold_batch_norm=True, epsilon=1e-3)
    """

    def _channels(self, input_shape):
        return self.filters

    def call(self, inputs):
        kernel, bias = self._folded(self.kernel, (1, 1, 1, -1), (0, 1, 2))
        return self._finish(self.convolution_op(inputs, kernel), bias)


@keras.saving.register_keras_serializable(package="kseg")
class FoldedDepthwiseConv2D(_Folding, keras.layers.DepthwiseConv2D):
    """A DepthwiseConv2D with the batch norm after it folded in and its kernel rounded per channel (int8): the
    per-channel ranges LiteRT's DEPTHWISE_CONV_2D stores (channel i * multiplier + m).

        layer = FoldedDepthwiseConv2D(kernel_size=3, fold_batch_norm=True)
    """

    def _channels(self, input_shape):
        return int(input_shape[-1]) * self.depth_multiplier

    def call(self, inputs):
        kernel, bias = self._folded(self.kernel, (1, 1, -1, self.depth_multiplier), (0, 1))
        outputs = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate, data_format=self.data_format)
        return self._finish(outputs, bias)


@keras.saving.register_keras_serializable(package="kseg")
class FoldedDense(_Folding, keras.layers.Dense):
    """A Dense with the batch norm after it folded in and its kernel rounded per output unit (int8).

        layer = FoldedDense(units=8)
    """

    def _channels(self, input_shape):
        return self.units

    def call(self, inputs):
        kernel, bias = self._folded(self.kernel, (1, -1), (0,))
        return self._finish(ops.matmul(inputs, kernel), bias)


FOLDED = {keras.layers.Conv2D: FoldedConv2D, keras.layers.DepthwiseConv2D: FoldedDepthwiseConv2D,
          keras.layers.Dense: FoldedDense}


def _weighted(layer):
    """The folded class for a layer whose weights the converter rounds per channel (exact Keras types), or None."""
    kind = FOLDED.get(type(layer))
    return kind if getattr(layer, "data_format", "channels_last") == "channels_last" else None


def _fusable(layer):
    if type(layer).__name__ == "ReLU":
        config = layer.get_config()
        return not config.get("negative_slope") and not config.get("threshold") and config.get("max_value") in (None, 6)
    return type(layer).__name__ == "Activation" and layer.get_config()["activation"] in FUSABLE


def _plan(model):
    """(folds: {id(batch norm): conv layer}, consumers: {id(tensor): consuming layers}) of a flat functional model."""
    consumers = {}
    for node in (n for depth in model._nodes_by_depth.values() for n in depth):
        for tensor in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
            if isinstance(tensor, keras.KerasTensor):
                consumers.setdefault(id(tensor), []).append(node.operation)
    outputs = {id(t) for t in model.outputs}
    folds = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        source = layer._inbound_nodes[0].arguments.args[0]
        producer = source._keras_history.operation
        if (layer.axis in (-1, len(source.shape) - 1) and _weighted(producer) and len(producer._inbound_nodes) == 1
                and producer.get_config().get("activation") == "linear" and id(source) not in outputs
                and len(consumers.get(id(source), [])) == 1):
            folds[id(layer)] = producer
    return folds, consumers


def simulate(model, *, images=None, quantize: bool = True, ranges: dict | None = None) -> tuple:
    """`(simulated, record)`: a functional model computing what `model`'s full-int8 LiteRT file computes (the
    module docstring's scheme), sharing `model`'s layers except the folded ones (new layers, weights copied).

    Activation ranges are the min and max over `images` (float32 (1, H, W, 3) arrays: the calibration images) of
    each quantized tensor in the float model (batch norm folded, nothing rounded), or `ranges` ({tensor key: (low,
    high)}: a `record["ranges"]`). `quantize=False`: nothing rounded, batch norm folded: equal to `model` in float.
    `record`: "folded" (conv name -> batch norm name), "simulated" (layers whose weights are rounded), "ranges",
    "quantized" (how many tensors are).
    """
    if quantize and ranges is None:
        if images is None:
            raise ValueError("simulate needs calibration images (or ranges) to quantize activations")
        float_model, _, points = _build(model, quantize=False, ranges={})
        ranges = calibrate(keras.Model(float_model.inputs[0], [tensor for _, tensor in points]),
                           [key for key, _ in points], images)
    simulated, record, points = _build(model, quantize=quantize, ranges=ranges or {})
    record["ranges"] = dict(ranges or {})
    record["quantized"] = len(points) if quantize else 0
    return simulated, record


def calibrate(probe, keys, images) -> dict:
    """{key: (min, max)} of each output of `probe` over `images`: the converter's calibration (absolute min/max)."""
    low, high = np.full(len(keys), np.inf), np.full(len(keys), -np.inf)
    for image in images:
        for i, value in enumerate(keras.tree.flatten(probe(image, training=False))):
            value = ops.convert_to_numpy(value)
            low[i], high[i] = min(low[i], float(value.min())), max(high[i], float(value.max()))
    return {key: (float(lo), float(hi)) for key, lo, hi in zip(keys, low, high)}


def restore(simulated, target) -> None:
    """Copies the weights of `simulated`'s folded layers back into the layers of the same name in `target`
    (the plain model `simulate` was built from: its kernels and biases; batch norm stays as it was)."""
    for layer in simulated.layers:
        if type(layer) in FOLDED.values():  # exactly the folded classes (no subclasses exist)
            plain = target.get_layer(layer.name)
            plain.set_weights(layer.get_weights()[:len(plain.weights)])


def _bn_weights(bn):
    channels = int(bn.moving_mean.shape[0])
    gamma = bn.gamma.numpy() if bn.gamma is not None else np.ones(channels, "float32")
    beta = bn.beta.numpy() if bn.beta is not None else np.zeros(channels, "float32")
    return [gamma, beta, bn.moving_mean.numpy(), bn.moving_variance.numpy()]


def _build(model, *, quantize, ranges):
    """(simulated model, record, [(tensor key, tensor before its fake quantization)])."""
    folds, consumers = _plan(model)
    bn_after = {id(conv): bn for bn in model.layers for bn_id, conv in folds.items() if id(bn) == bn_id}
    outputs = {id(t) for t in model.outputs}
    tensors, points, record = {}, [], {"folded": {}, "simulated": []}

    def mapped(value):
        return tensors[id(value)] if isinstance(value, keras.KerasTensor) else value

    def quantize_point(layer, tensor):
        kind = type(layer).__name__
        if kind in PASS_THROUGH or (kind == "UpSampling2D" and layer.interpolation == "nearest"):
            return False
        if id(layer) in bn_after:
            return False  # the input of its folded batch norm: no tensor of the file
        users = consumers.get(id(tensor), [])
        fuses = _weighted(layer) or isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Add))
        return not (fuses and len(users) == 1 and _fusable(users[0]) and id(tensor) not in outputs)

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                tensors[id(node.outputs[0])] = keras.Input(shape=layer.output.shape[1:], name=layer.name)
                continue
            args = keras.tree.map_structure(mapped, node.arguments.args)
            kwargs = {k: keras.tree.map_structure(mapped, v) for k, v in node.arguments.kwargs.items()}
            if id(layer) in folds:  # the conv before it applies it
                result = args[0]
            elif _weighted(layer) and len(layer._inbound_nodes) == 1:
                bn = bn_after.get(id(layer))
                twin = _weighted(layer)(fold_batch_norm=bn is not None, epsilon=bn.epsilon if bn else 1e-3,
                                        quantize=quantize, **layer.get_config())
                result = twin(*args, **kwargs)
                twin.set_weights(layer.get_weights() + (_bn_weights(bn) if bn else []))
                record["simulated"].append(layer.name)
                if bn is not None:
                    record["folded"][layer.name] = bn.name
            else:
                result = layer(*args, **kwargs)
            for index, (source, out) in enumerate(zip(node.outputs, keras.tree.flatten(result))):
                if quantize_point(layer, source):
                    key = f"{layer.name}:{index}"
                    points.append((key, out))
                    if quantize and ranges.get(key):
                        out = ActivationFakeQuant(*ranges[key], name=f"{layer.name}_fq{index}")(out)
                tensors[id(source)] = out
    heads = [tensors[id(t)] for t in model.outputs]
    simulated = keras.Model(tensors[id(model.inputs[0])], heads[0] if len(heads) == 1 else heads, name=model.name)
    return simulated, record, points
