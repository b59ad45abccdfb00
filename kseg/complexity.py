"""Model complexity: multiply-accumulates (MACs) and parameters, counted analytically at a fixed input size.

    kseg.complexity.count_macs(model, (256, 256))        # an int, for one image
    report = kseg.complexity.complexity(model, (256, 256))
    report.by_type                                        # {"Conv2D": ..., "DepthwiseConv2D": ...}
    print(report.table(top=10))

How MACs are counted. The model is traced symbolically (no arithmetic runs) at batch 1 and the given
size, so every layer sees static shapes whatever the model's own input shape (None, None, 3 included);
nested models and layers that call sublayers are followed. One multiply-accumulate is one multiply
and one add, i.e. 2 FLOPs. For each call of a layer, with H_out x W_out output positions:

- Conv1D/2D/3D: out positions * kernel elements * C_in / groups * C_out. A dilated (atrous)
  convolution counts the same as an undilated one of its kernel size: this is the nominal count.
  TensorFlow and LiteRT run dilation as SpaceToBatchND + a convolution on padded maps and so execute
  more (1.2-1.7x for DeepLabV3+ MobileNetV2, see FACTS.md); that excess is not counted.
- DepthwiseConv1D/2D: out positions * kernel elements * C_in * depth_multiplier.
- SeparableConv1D/2D: its depthwise part as above, plus out positions * C_in * depth_multiplier * C_out.
- Conv1D/2D/3DTranspose: *input* positions * kernel elements * C_in * C_out (every input pixel
  scatters a full kernel), the usual convention.
- Dense: input positions (every axis but the last) * input features * units.
- A layer with a `macs(input_shapes, output_shape)` method (a custom layer that computes with
  `keras.ops`, e.g. SegFormer's `EfficientAttention`): what that method returns. `input_shapes` is a
  tuple of shapes when the layer takes a list of tensors.

Ignored, because they are not multiply-accumulates or are negligible next to convolutions: biases,
batch normalisation (folded into the convolution at export), activations, additions and other
elementwise ops, pooling, resizing (UpSampling2D, ResizeLike), concatenation, padding, and any layer
type not listed above (EinsumDense, attention, recurrent layers, custom layers that compute with
`keras.ops` directly and declare no `macs`). Works on every Keras 3 backend.
"""

import dataclasses

import keras

# Which counting rule applies to a layer, most specific class first (Keras 3 keeps these families
# apart: Conv2DTranspose, DepthwiseConv2D and SeparableConv2D do not subclass Conv2D).
_RULES = (
    ("transpose", (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)),
    ("depthwise", (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)),
    ("separable", (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)),
    ("conv", (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)),
    ("dense", (keras.layers.Dense,)),
)


@dataclasses.dataclass(frozen=True)
class LayerCount:
    """MACs of one call of one layer."""

    name: str
    type: str
    macs: int
    input_shape: tuple
    output_shape: tuple


@dataclasses.dataclass
class Complexity:
    """MACs (per image) and parameters of a model at one input size."""

    input_shape: tuple  # (1, H, W, C) as traced
    macs: int
    params: int
    trainable_params: int
    layers: list  # LayerCount per counted layer call, in call order

    @property
    def gflops(self):
        """Giga floating-point operations per image: 2 FLOPs per MAC."""
        return 2 * self.macs / 1e9

    @property
    def by_type(self):
        """MACs per layer class, largest first."""
        totals = {}
        for layer in self.layers:
            totals[layer.type] = totals.get(layer.type, 0) + layer.macs
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def top(self, n=10):
        """The `n` layer calls with the most MACs."""
        return sorted(self.layers, key=lambda layer: -layer.macs)[:n]

    def table(self, top=10):
        """A markdown summary: totals, MACs by layer type, and the `top` costliest layers."""
        total = max(self.macs, 1)
        lines = [
            f"Input {tuple(self.input_shape[1:])}: {self.macs / 1e9:.3f} GMACs ({self.gflops:.3f} GFLOPs), "
            f"{self.params:,} parameters ({self.trainable_params:,} trainable).",
            "",
            "| layer type | GMACs | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {kind} | {macs / 1e9:.4f} | {100 * macs / total:.1f}% |" for kind, macs in self.by_type.items()]
        lines += ["", "| layer | type | output | GMACs | share |", "|---|---|---|---:|---:|"]
        lines += [
            f"| {layer.name} | {layer.type} | {'x'.join(str(d) for d in layer.output_shape[1:])} "
            f"| {layer.macs / 1e9:.4f} | {100 * layer.macs / total:.1f}% |"
            for layer in self.top(top)
        ]
        return "\n".join(lines)

    def to_json(self, top=10):
        return {
            "input_shape": list(self.input_shape),
            "macs": self.macs,
            "gflops": self.gflops,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "by_type": self.by_type,
            "top": [dataclasses.asdict(layer) for layer in self.top(top)],
        }


def count_params(model, trainable_only=False):
    """Number of parameters (weights plus batch-norm statistics; only trainable ones if asked)."""
    weights = model.trainable_weights if trainable_only else model.weights
    total = 0
    for weight in weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total


def count_macs(model, input_size=None):
    """Multiply-accumulates for one image of `input_size` (height, width); see the module docstring.

    `input_size` may be left out when the model's input has a static height and width.
    """
    return complexity(model, input_size).macs


def complexity(model, input_size=None):
    """A `Complexity` report (total, per layer type, per layer) for one image of `input_size`."""
    shape = _input_shape(model, input_size)
    calls, patched = [], {}
    for layer in _leaf_layers(model):
        rule = _rule(layer)
        if rule is not None and id(layer) not in patched:
            patched[id(layer)] = (layer, layer.__dict__.get("call"))
            _record_calls(layer, rule, calls)
    try:
        _trace(model, shape)
    finally:
        for layer, own_call in patched.values():
            if own_call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own_call)
    return Complexity(
        input_shape=shape,
        macs=sum(call.macs for call in calls),
        params=count_params(model),
        trainable_params=count_params(model, trainable_only=True),
        layers=calls,
    )


def _input_shape(model, input_size):
    inputs = model.inputs if hasattr(model, "inputs") and model.inputs else None
    if not inputs or len(inputs) != 1:
        raise ValueError(f"{model.name}: complexity counts single-input models, got inputs {inputs!r}")
    static = tuple(inputs[0].shape[1:])
    spatial, channels = static[:-1], static[-1]
    if channels is None:
        raise ValueError(f"{model.name}: the input's channel count must be known, got shape {static}")
    if input_size is None:
        if None in spatial:
            raise ValueError(f"{model.name} takes any size {static}: pass input_size, e.g. (256, 256)")
        input_size = spatial
    input_size = (int(input_size),) * len(spatial) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(input_size) != len(spatial):
        raise ValueError(f"input_size {input_size} does not match the model's input shape {static}")
    for fixed, wanted in zip(spatial, input_size):
        if fixed is not None and fixed != wanted:
            raise ValueError(f"{model.name} was built for input {static}; cannot count it at {input_size}")
    return (1, *input_size, int(channels))


def _leaf_layers(model):
    # Every layer reachable from the model, nested models and sublayers of custom layers included.
    # `_flatten_layers` is Keras 3's own (private) walk; fall back to `model.layers` recursively.
    if hasattr(model, "_flatten_layers"):
        return list(model._flatten_layers(include_self=False, recursive=True))
    layers, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        layers.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return layers


def _rule(layer):
    if callable(getattr(layer, "macs", None)):
        return "declared"
    for rule, classes in _RULES:
        if isinstance(layer, classes):
            return rule
    return None


def _record_calls(layer, rule, calls):
    """Shadows the layer's `call` on the instance with one that records the shapes it sees."""
    original = layer.call

    def call(inputs, *args, **kwargs):
        outputs = original(inputs, *args, **kwargs)
        in_shape = tuple(map(_shape, inputs)) if isinstance(inputs, (list, tuple)) else _shape(inputs)
        out_shape = _shape(outputs)
        calls.append(LayerCount(layer.name, type(layer).__name__, _macs(layer, rule, in_shape, out_shape),
                                in_shape, out_shape))
        return outputs

    # Plain object attribute: Keras' attribute tracking has nothing to track in a function.
    object.__setattr__(layer, "call", call)


def _shape(tensor):
    shape = tuple(tensor.shape)
    if any(dim is None for dim in shape):
        raise ValueError(f"a layer saw a partly unknown shape {shape} while counting MACs")
    return tuple(int(dim) for dim in shape)


def _product(values):
    total = 1
    for value in values:
        total *= int(value)
    return total


def _split(layer, shape):
    """(batch, spatial dims, channels) of a convolution's input or output shape."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return shape[0], shape[2:], shape[1]
    return shape[0], shape[1:-1], shape[-1]


def _macs(layer, rule, in_shape, out_shape):
    if rule == "declared":
        return int(layer.macs(in_shape, out_shape))
    if rule == "dense":
        return _product(in_shape[:-1]) * in_shape[-1] * out_shape[-1]
    batch, in_spatial, c_in = _split(layer, in_shape)
    _, out_spatial, c_out = _split(layer, out_shape)
    kernel = _product(layer.kernel_size)
    out_positions = batch * _product(out_spatial)
    if rule == "conv":
        return out_positions * kernel * (c_in // getattr(layer, "groups", 1)) * c_out
    if rule == "transpose":
        return batch * _product(in_spatial) * kernel * c_in * c_out
    depthwise = out_positions * kernel * c_in * layer.depth_multiplier
    if rule == "depthwise":
        return depthwise
    return depthwise + out_positions * c_in * layer.depth_multiplier * c_out  # separable


class _Trace(keras.layers.Layer):
    """Runs a model inside `Layer.compute_output_spec`: the backend traces it on symbolic tensors
    (a TensorFlow FuncGraph, `jax.eval_shape`, ...) with static shapes and computes nothing."""

    def __init__(self, model):
        super().__init__(name="kseg_complexity_trace")
        object.__setattr__(self, "_model", model)  # untracked: the model's weights are not this layer's

    def call(self, x):
        return self._model(x, training=False)


def _trace(model, shape):
    dtype = model.inputs[0].dtype or "float32"
    _Trace(model).compute_output_spec(keras.KerasTensor(shape, dtype=dtype))
