"""The tf_keras bridge: a Keras 3 functional model rebuilt layer by layer as a tf_keras (Keras 2) model.

tensorflow-model-optimization (tfmot) only takes tf_keras models. `to_tf_keras` rebuilds a Keras 3
model at a fixed input size, copies the weights and checks that both give the same outputs; QAT
(`kseg.deploy.compression.qat`) and pruning (`kseg.deploy.compression.pruning`) then run on that twin:

    twin = kseg.deploy.compression.to_tf_keras(model, input_size=(257, 257))

Each Keras 3 layer becomes the tf_keras layer of the same class name with a translated config. Other
layers (kseg's own, see `kseg.deploy.compression.twins`) plug in with `register_twin`; a tf_keras layer that
tfmot cannot quantize gets a QuantizeConfig with `register_quantize_config`.
"""


from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kseg.deploy.compression.same_name import same_name_twin
from kseg.errors import KsegError, first_line

# ------------------------------------------------------------------------------------------------
# Extension points

_TWINS: dict[str, Callable] = {}  # Keras 3 class name -> build(layer, args, kwargs) -> (tf_keras layer, args, kwargs)
_QUANTIZE_CONFIGS: dict[str, Callable] = {}  # tf_keras class name -> factory of a tfmot QuantizeConfig
_CUSTOM_OBJECTS = {}  # tf_keras classes and QuantizeConfigs that tfmot's model clones deserialise


def register_twin(class_name):
    """Decorator: `@register_twin("MaxUnpooling2D")` over `build(layer, args, kwargs)`.

    `build` gets a Keras 3 layer of that class and the arguments of one of its calls, with Keras 3
    tensors replaced by tf_keras tensors of static shape. It returns `(tf_keras_layer, args, kwargs)`:
    the layer to call in its place (named like `layer`, holding the same weights in the same order)
    and what to call it with. Layers of `keras.layers` need no registration: they map by class name.
    A custom tf_keras class also needs `register_quantize_config` for QAT and pruning.
    """

    def decorator(build):
        _TWINS[class_name] = build
        return build

    return decorator


def register_quantize_config(tf_keras_class, factory=None):
    """Makes a tf_keras layer class quantizable: `factory()` returns its tfmot QuantizeConfig.

    The default, `OutputQuantizeConfig`, quantizes the layer's output only: right for layers
    without weights (resizes, rescaling). A class (not a name) is also registered for
    deserialisation in tfmot's model clones.
    """
    name = tf_keras_class if isinstance(tf_keras_class, str) else tf_keras_class.__name__
    _QUANTIZE_CONFIGS[name] = factory or OutputQuantizeConfig
    if not isinstance(tf_keras_class, str):
        _CUSTOM_OBJECTS[name] = tf_keras_class


class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes a layer's output only (8 bits, asymmetric, moving-average range); no weights."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


_CUSTOM_OBJECTS["OutputQuantizeConfig"] = OutputQuantizeConfig
register_quantize_config("Rescaling")  # x * scale + offset: tfmot has no config for it, its output suffices


class Keras3Call(tf_keras.layers.Layer):
    """Runs a weightless Keras 3 layer's `call` in a tf_keras graph (Keras 3 ops take TensorFlow tensors).

    For custom layers written with `keras.ops` and without weights; the Keras 3 layer travels in the
    config, so tfmot's clones rebuild it (it must be registered serializable).
    """

    def __init__(self, keras3_layer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(keras3_layer, dict):
            keras3_layer = keras.saving.deserialize_keras_object(keras3_layer)
        self._keras3_config = keras.saving.serialize_keras_object(keras3_layer)
        self._keras3_call = keras3_layer.call  # a bound method: tf_keras does not track the Keras 3 layer

    def call(self, inputs):
        return self._keras3_call(inputs)

    def get_config(self):
        return {**super().get_config(), "keras3_layer": self._keras3_config}


register_quantize_config(Keras3Call)


def keras3_call_twin(layer, args, kwargs):
    """A twin for weightless custom layers: `register_twin("MyLayer")(kseg.deploy.compression.keras3_call_twin)`."""
    if layer.weights:
        raise KsegError(f"layer {layer.name!r} ({type(layer).__name__}) has weights: it needs a tf_keras twin "
                        "that holds them (register one with kseg.deploy.compression.register_twin)")
    return Keras3Call(layer, name=layer.name), args, kwargs


# ------------------------------------------------------------------------------------------------
# The bridge


def to_tf_keras(model, input_size=None, check=True, atol=None):
    """Rebuilds a Keras 3 functional `model` as a tf_keras model at a fixed (height, width), same weights.

    Every resize becomes static. `check` runs both models on one random image and raises a KsegError
    naming the first layer whose outputs differ by more than `atol` (relative to the output's
    magnitude when that exceeds 1; default 1e-4, or 5e-2 for a mixed-precision model); a layer
    without a twin also raises a KsegError that names it. The twin is float32 whatever the model's
    dtype policy.
    """
    input_size = static_input_size(model, input_size)
    if atol is None:
        mixed = any(layer.compute_dtype not in (None, "float32") for layer in model.layers)
        atol = 5e-2 if mixed else 1e-4
    twin, pairs, probes = _rebuild(model, input_size)
    for layer, twin_layer in pairs:
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            twin_layer.set_weights(weights)
        except ValueError as error:
            raise KsegError(f"layer {layer.name!r} ({type(layer).__name__}): its weights do not fit the "
                            f"tf_keras twin ({first_line(error)})") from error
    if check:
        _check_twin(model, twin, input_size=input_size, probes=probes, atol=atol)
    return twin


def static_input_size(model, input_size):
    """The (height, width) a single-input model is bridged at: `input_size`, or the size it is built for."""
    if len(model.inputs) != 1:
        raise KsegError(f"{model.name}: the tf_keras bridge takes single-input models, got {len(model.inputs)} inputs")
    built = tuple(model.inputs[0].shape[1:3])
    if input_size is None:
        if None in built:
            raise KsegError(f"{model.name} takes any input size: give input_size=(height, width)")
        return built
    input_size = tuple(int(s) for s in input_size)
    if None not in built and built != input_size:
        raise KsegError(f"{model.name} is built for {built[0]}x{built[1]} inputs, not "
                        f"{input_size[0]}x{input_size[1]}; build it with input_shape=(None, None, 3)")
    return input_size


def _rebuild(model, input_size):
    """Walks the Keras 3 graph in topological order, calling each layer's twin on the mapped tensors.

    Returns the tf_keras model, (Keras 3 layer, twin layer) pairs and (layer, Keras 3 tensor, tf_keras
    tensor) triples for every intermediate output (to locate a divergence).
    """
    tensors = {}  # id(Keras 3 tensor) -> tf_keras tensor
    twins = {}  # id(Keras 3 layer) -> its twin: a layer called twice stays one (shared) layer
    pairs, probes, inputs = [], [], []

    def mapped(value):
        return tensors[id(value)] if isinstance(value, keras.KerasTensor) else value

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if isinstance(op, keras.layers.InputLayer):
                tensor = tf_keras.Input(shape=(*input_size, *op.output.shape[3:]), name=op.name, dtype="float32")
                tensors[id(node.outputs[0])] = tensor
                inputs.append(tensor)
                continue
            kind = type(op).__name__
            if not isinstance(op, keras.layers.Layer):
                raise KsegError(f"operation {op.name!r} ({kind}) has no tf_keras twin: use a keras.layers layer "
                                "instead of a keras.ops call on model tensors")
            if isinstance(op, keras.Model):
                raise KsegError(f"layer {op.name!r} ({kind}) is a nested model; the tf_keras bridge takes flat "
                                "functional models")
            args = keras.tree.map_structure(mapped, node.arguments.args)
            kwargs = {k: keras.tree.map_structure(mapped, v) for k, v in node.arguments.kwargs.items() if v is not None}
            built = _TWINS.get(kind, same_name_twin)(op, args, kwargs)
            if built is None:
                raise KsegError(f"layer {op.name!r} ({kind}) has no tf_keras twin; register one with "
                                "kseg.deploy.compression.register_twin")
            twin_layer, args, kwargs = built
            if id(op) in twins:
                twin_layer = twins[id(op)]
            else:
                twins[id(op)] = twin_layer
                pairs.append((op, twin_layer))
            try:
                outputs = twin_layer(*args, **kwargs)
            except Exception as error:  # shape errors and the like: name the layer, keep one line
                raise KsegError(f"layer {op.name!r} ({kind}): its tf_keras twin fails ({first_line(error)})") from error
            for k3_tensor, tensor in zip(node.outputs, tf.nest.flatten(outputs)):
                tensors[id(k3_tensor)] = tensor
                probes.append((op, k3_tensor, tensor))
    outputs = [tensors[id(t)] for t in model.outputs]
    twin = tf_keras.Model(inputs[0], outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    return twin, pairs, probes


def _check_twin(model, twin, *, input_size, probes, atol):
    channels = model.inputs[0].shape[-1]
    x = np.random.default_rng(0).uniform(0, 255, (1, *input_size, channels)).astype("float32")
    want = [keras.ops.convert_to_numpy(t) for t in tf.nest.flatten(model(x, training=False))]
    got = [np.asarray(t) for t in tf.nest.flatten(twin(x, training=False))]
    if all(_within(a, b, atol) for a, b in zip(want, got)):
        return
    # Locate the first layer whose output differs, running every intermediate tensor of both graphs.
    k3_probe = keras.Model(model.inputs[0], [t for _, t, _ in probes])
    tf_probe = tf_keras.Model(twin.inputs[0], [t for _, _, t in probes])
    for (layer, _, _), a, b in zip(probes, k3_probe(x, training=False), tf_probe(x, training=False)):
        a, b = keras.ops.convert_to_numpy(a), np.asarray(b)
        if not _within(a, b, atol):
            difference = np.abs(a.astype(np.float64) - b).max() if a.shape == b.shape else "shape"
            raise KsegError(f"{model.name}: the tf_keras twin differs from layer {layer.name!r} "
                            f"({type(layer).__name__}) on (max abs difference {difference:.3g})")
    raise KsegError(f"{model.name}: the tf_keras twin's outputs differ from the Keras model's")


def _within(a, b, atol):
    if a.shape != b.shape:
        return False
    return float(np.abs(a.astype(np.float64) - b).max()) <= atol * max(1.0, float(np.abs(a).max()))


def custom_objects():
    """The tf_keras classes and QuantizeConfigs that tfmot's model clones deserialise (for `quantize_scope`)."""
    return dict(_CUSTOM_OBJECTS)


def quantize_config(layer):
    """The registered tfmot QuantizeConfig for a tf_keras layer, or None (tfmot's own default then applies)."""
    factory = _QUANTIZE_CONFIGS.get(type(layer).__name__)
    return factory() if factory else None

