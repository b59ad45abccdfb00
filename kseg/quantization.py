"""Quantization-aware training (QAT) and pruning of kseg models, and their LiteRT export.

tensorflow-model-optimization (tfmot) only takes tf_keras (Keras 2) models. `to_tf_keras` rebuilds a
Keras 3 functional model layer by layer as a tf_keras model at a fixed input size, copies the weights
and checks that both give the same outputs; QAT and pruning then run on that twin:

    info = kseg.quantization.qat_to_litert(model, "model_qat.tflite", train, input_size=(257, 257), steps=500)
    info = kseg.quantization.prune_to_litert(model, "model_pruned.tflite", train, (257, 257), sparsity=0.5)

or step by step:

    qat = kseg.quantization.quantization_aware_training(model, train, (257, 257), steps=500)
    kseg.quantization.export_tf_keras(qat, "model_qat.tflite", "int8", calibration=train, training="qat")

Each Keras 3 layer becomes the tf_keras layer of the same class name with a translated config. Other
layers (kseg's own, such as `ResizeLike`) plug in with `register_twin`; a tf_keras layer that tfmot
cannot quantize gets a QuantizeConfig with `register_quantize_config` (kseg's twins and `Rescaling`
quantize their output only).
"""

import inspect
import re

import keras
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from kseg import export
from kseg.errors import KsegError

IGNORE_LABEL = 255

# ------------------------------------------------------------------------------------------------
# Extension points

_TWINS = {}  # Keras 3 class name -> build(layer, args, kwargs) -> (tf_keras layer, args, kwargs)
_QUANTIZE_CONFIGS = {}  # tf_keras class name -> factory of a tfmot QuantizeConfig
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


# ------------------------------------------------------------------------------------------------
# Twins of kseg's own layers


class StaticResize(tf_keras.layers.Layer):
    """tf_keras twin of `kseg.models.blocks.ResizeLike` at a static size: resizes its input to `size`."""

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
    """A twin for weightless custom layers: `register_twin("MyLayer")(kseg.quantization.keras3_call_twin)`."""
    if layer.weights:
        raise KsegError(f"layer {layer.name!r} ({type(layer).__name__}) has weights: it needs a tf_keras twin "
                        "that holds them (register one with kseg.quantization.register_twin)")
    return Keras3Call(layer, name=layer.name), args, kwargs


register_twin("ReverseChannels")(keras3_call_twin)  # kseg.models.backbones: RGB -> BGR (REVERSE_V2)
register_twin("MaxUnpooling2D")(keras3_call_twin)  # kseg.models.blocks: SegNet's unpooling (builtins only)


@register_twin("BatchNormalization")
def _batch_norm_twin(layer, args, kwargs):
    """keras.layers.BatchNormalization and kseg's (which only trains faster) both become tf_keras's."""
    return _same_name_twin(layer, args, kwargs, subclasses=True)


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
    input_size = _static_input_size(model, input_size)
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
                            f"tf_keras twin ({_first_line(error)})") from None
    if check:
        _check_twin(model, twin, input_size, probes, atol)
    return twin


def _static_input_size(model, input_size):
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
            built = _TWINS.get(kind, _same_name_twin)(op, args, kwargs)
            if built is None:
                raise KsegError(f"layer {op.name!r} ({kind}) has no tf_keras twin; register one with "
                                "kseg.quantization.register_twin")
            twin_layer, args, kwargs = built
            if id(op) in twins:
                twin_layer = twins[id(op)]
            else:
                twins[id(op)] = twin_layer
                pairs.append((op, twin_layer))
            try:
                outputs = twin_layer(*args, **kwargs)
            except Exception as error:  # shape errors and the like: name the layer, keep one line
                raise KsegError(f"layer {op.name!r} ({kind}): its tf_keras twin fails ({_first_line(error)})") from None
            for k3_tensor, tensor in zip(node.outputs, tf.nest.flatten(outputs)):
                tensors[id(k3_tensor)] = tensor
                probes.append((op, k3_tensor, tensor))
    outputs = [tensors[id(t)] for t in model.outputs]
    twin = tf_keras.Model(inputs[0], outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    return twin, pairs, probes


def _same_name_twin(layer, args, kwargs, subclasses=False):
    """The tf_keras layer of the same class name, for layers of `keras.layers` itself (else None).

    `subclasses=True` also takes subclasses that keep their parent's config and weights.
    """
    class_name = type(layer).__name__
    cls = getattr(tf_keras.layers, class_name, None)
    parent = getattr(keras.layers, class_name, None)
    exact = parent is type(layer)
    if not isinstance(cls, type) or not (exact or (subclasses and isinstance(parent, type)
                                                   and isinstance(layer, parent))):
        return None
    accepted = _accepted_options(cls)
    # Initializers are dropped: the weights are copied, and custom ones (kseg's BilinearUpsampling) have
    # no tf_keras class.
    config = {k: _translate(v) for k, v in layer.get_config().items()
              if k in accepted and not k.endswith("_initializer")}
    config["dtype"] = "float32"
    try:
        return cls.from_config(config), args, kwargs
    except (TypeError, ValueError) as error:
        raise KsegError(f"layer {layer.name!r} ({class_name}): its config does not fit tf_keras "
                        f"({_first_line(error)})") from None


_BASE_LAYER_OPTIONS = {"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights",
                       "activity_regularizer", "autocast"}


def _accepted_options(cls):
    """Constructor options of a tf_keras layer class and its parents: Keras-3-only keys are dropped."""
    options = set(_BASE_LAYER_OPTIONS)
    for klass in cls.__mro__:
        if issubclass(klass, tf_keras.layers.Layer) and "__init__" in vars(klass):
            options.update(inspect.signature(klass.__init__).parameters)
    return options - {"self", "args", "kwargs"}


def _translate(value):
    """A Keras 3 config value in tf_keras terms: dtype policies become float32; nested objects
    (initializers, regularizers) lose Keras-3-only fields (module, registered_name, None options)."""
    if isinstance(value, dict):
        class_name = value.get("class_name")
        if class_name in ("DTypePolicy", "FloatDTypePolicy"):
            return "float32"  # tfmot and the converters want float32; mixed precision is a training matter
        if class_name is not None and "config" in value:
            config = value["config"]
            if isinstance(config, dict):
                config = {k: _translate(v) for k, v in config.items() if v is not None}
            return {"class_name": class_name, "config": config}
        return {k: _translate(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_translate(v) for v in value)
    return value


def _check_twin(model, twin, input_size, probes, atol):
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


def _first_line(error):
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Exception encountered") and len(lines) > 1:  # Keras's wrapper: the cause is next
        return f"{type(error).__name__}: {lines[1]}"[:300]
    return lines[0][:300]


# ------------------------------------------------------------------------------------------------
# Fine-tuning the twin


class MaskedCrossEntropy(tf_keras.losses.Loss):
    """Pixel-wise cross-entropy over logits in tf_keras terms, ignoring `ignore_label` pixels.

    Softmax for C > 1 channels, sigmoid for 1; the mean is over the valid pixels of the batch
    (what `kseg.losses.CrossEntropy()` computes in Keras 3).
    """

    def __init__(self, ignore_label=IGNORE_LABEL, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        channels = y_pred.shape[-1]
        logits = tf.reshape(tf.cast(y_pred, tf.float32), [-1, channels])
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        valid = tf.not_equal(labels, self.ignore_label)
        labels = tf.where(valid, labels, 0)
        if channels == 1:
            losses = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(labels, tf.float32), logits[:, 0])
        else:
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        weights = tf.cast(valid, tf.float32)
        return tf.reduce_sum(losses * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}


def _fit(model, train_split, input_size, epochs, steps, batch_size, learning_rate, loss, callbacks, verbose,
         run_eagerly):
    import kseg.data

    classes = model.output_shape[-1]
    if classes not in (1, train_split.num_classes):
        raise KsegError(f"{model.name} predicts {classes} classes but the training data has {train_split.num_classes}")
    batches = kseg.data.pipeline(train_split, batch_size, size=input_size, training=True, repeat=steps is not None)
    model.compile(tf_keras.optimizers.Adam(learning_rate), loss=MaskedCrossEntropy() if loss is None else loss,
                  run_eagerly=run_eagerly)
    model.fit(batches, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks or []), verbose=verbose)


def quantize_twin(twin):
    """tfmot's `quantize_model` on a tf_keras twin, with kseg's QuantizeConfigs for layers tfmot lacks.

    tfmot's refusals (a layer it cannot quantize, a batch norm that follows no convolution) become
    one-line KsegErrors that name the layer.
    """
    qkeras = tfmot.quantization.keras

    def annotate(layer):
        factory = _QUANTIZE_CONFIGS.get(type(layer).__name__)
        return qkeras.quantize_annotate_layer(layer, factory()) if factory else layer

    with qkeras.quantize_scope(dict(_CUSTOM_OBJECTS)):
        try:
            annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
            return qkeras.quantize_apply(qkeras.quantize_annotate_model(annotated))
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise _tfmot_error(twin, error) from None


def _tfmot_error(model, error):
    text = str(error)
    unsupported = re.search(r"Layer (\S+?):<class '[\w.]*?(\w+)'> is not supported", text)
    if unsupported and unsupported.group(2) == "BatchNormalization":
        return KsegError(f"{model.name}: layer {unsupported.group(1)!r} (BatchNormalization) cannot be "
                         "quantization-aware trained: tfmot needs each batch norm directly after a Conv2D or "
                         "DepthwiseConv2D")
    if unsupported:
        return KsegError(f"{model.name}: layer {unsupported.group(1)!r} ({unsupported.group(2)}) cannot be "
                         "quantization-aware trained: tfmot has no QuantizeConfig for it (register one with "
                         "kseg.quantization.register_quantize_config)")
    return KsegError(f"{model.name}: quantization-aware training is not possible: {_first_line(error)}")


def _range_variables(layer, prefixes):
    """{"min": var, "max": var}: the per-tensor fake-quant range of `layer` named `<prefix>_min/_max`."""
    found = {}
    for weight in layer.weights:
        name = weight.name.split("/")[-1].split(":")[0]
        for prefix in prefixes:
            for end in ("min", "max"):
                if name == f"{prefix}_{end}" and weight.shape.rank == 0:
                    found[end] = weight
    return found if len(found) == 2 else None


def _pin_input_range(qat_model, low=0.0, high=255.0):
    """Pins the input fake-quant range to [0, 255]: the int8 model takes raw pixels (scale 1, zero point 0)."""
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            variables = _range_variables(layer, [layer.name])
            if variables:
                variables["min"].assign(low)
                variables["max"].assign(high)


def initialise_ranges(qat_model, twin, images):
    """Starts every activation fake-quant range at the float twin's [min, max] over `images`.

    tfmot starts them at [-6, 6] and moves them by an EMA with decay 0.999, so a fine-tune of a few
    hundred steps would keep ranges that clip logits and spend 8 bits on 12 units for [-1, 1]
    inputs. These are the ranges post-training calibration would choose; training refines them.
    """
    targets = []
    for wrapper in qat_model.layers:
        if isinstance(wrapper, tfmot.quantization.keras.QuantizeWrapperV2):
            variables = _range_variables(wrapper, ("output", "post_activation"))
            if variables:
                targets.append((twin.get_layer(wrapper.layer.name).get_output_at(0), variables))
    if targets:
        probe = tf_keras.Model(twin.inputs, [tensor for tensor, _ in targets])
        low, high = np.zeros(len(targets)), np.zeros(len(targets))
        for image in images:
            for i, value in enumerate(tf.nest.flatten(probe(image, training=False))):
                low[i] = min(low[i], float(tf.reduce_min(value)))
                high[i] = max(high[i], float(tf.reduce_max(value)))
        for (_, variables), lo, hi in zip(targets, low, high):
            variables["min"].assign(lo)
            variables["max"].assign(hi)
    _pin_input_range(qat_model)


def quantization_aware_training(model, train_split, input_size=None, epochs=1, steps=None, batch_size=8,
                                learning_rate=1e-5, loss=None, num_calibration=16, freeze_batch_norm=True,
                                callbacks=None, verbose=0, run_eagerly=False):
    """Fine-tunes a Keras 3 kseg model with fake quantization; returns the QAT tf_keras model.

    Bridges `model` at `input_size`, applies tfmot's default 8-bit scheme (per-channel weights; batch
    norm folded into the preceding convolution at conversion), starts the activation ranges at those
    of `num_calibration` training images, and trains `epochs` x `steps` batches (`steps=None`: one
    pass over the split per epoch) of `kseg.data.pipeline(train_split, batch_size, input_size,
    training=True)` with `loss` (default `MaskedCrossEntropy()`, which ignores label 255; `kseg.losses`
    objects work too: Keras 3 ops take TensorFlow tensors). The input range stays [0, 255].

    `freeze_batch_norm` runs batch norm on its moving statistics (and keeps gamma and beta): small
    fine-tuning batches would otherwise pull the statistics of a trained model away from it.
    `run_eagerly` skips graph tracing, which is quicker for a handful of steps.
    Export with `export_tf_keras(qat, path, "int8", ..., training="qat")`.
    """
    input_size = _static_input_size(model, input_size)
    twin = to_tf_keras(model, input_size)
    qat = quantize_twin(twin)
    initialise_ranges(qat, twin, export.calibration_images(train_split, input_size, num_calibration))
    if freeze_batch_norm:
        _freeze_batch_norm(getattr(wrapper, "layer", None) for wrapper in qat.layers)
    _fit(qat, train_split, input_size, epochs, steps, batch_size, learning_rate, loss, callbacks, verbose, run_eagerly)
    _pin_input_range(qat)
    return qat


def _freeze_batch_norm(layers):
    for layer in layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False  # tf_keras runs a non-trainable batch norm in inference mode


def prune(model, train_split, input_size=None, target_sparsity=0.5, epochs=1, steps=None, batch_size=8,
          learning_rate=1e-4, loss=None, exclude=(), freeze_batch_norm=True, callbacks=None, verbose=0,
          run_eagerly=False):
    """Magnitude-prunes a Keras 3 kseg model while fine-tuning; returns (stripped tf_keras model, sparsity).

    The kernels tfmot prunes (Conv2D, Conv2DTranspose, Dense, SeparableConv2D pointwise; not
    depthwise) go from no zeros to `target_sparsity` along a polynomial schedule over the first three
    quarters of the `epochs` x `steps` batches, then fine-tune with their masks fixed. Layers named in
    `exclude` stay dense. The returned sparsity is the measured share of zeros in the pruned kernels.
    `loss`, `freeze_batch_norm` and `run_eagerly` as in `quantization_aware_training`.
    """
    if not 0 <= target_sparsity < 1:
        raise KsegError(f"target sparsity must be in [0, 1), got {target_sparsity!r}")
    input_size = _static_input_size(model, input_size)
    twin = to_tf_keras(model, input_size)
    if freeze_batch_norm:
        _freeze_batch_norm(twin.layers)
    if steps is None:
        try:
            steps = max(1, len(train_split) // batch_size)
        except TypeError:
            raise KsegError("the training split has no known length: give steps") from None
    end_step = max(1, int(epochs * steps * 0.75))
    frequency = max(1, end_step // 8)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target_sparsity), begin_step=0,
        end_step=frequency * (end_step // frequency), frequency=frequency)

    def wrap(layer):
        if layer.name in exclude or not _prunable(layer):
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

    with tfmot.quantization.keras.quantize_scope(dict(_CUSTOM_OBJECTS)):
        pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    wrappers = [layer for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    if not wrappers:
        raise KsegError(f"{model.name}: no layer has kernels that tfmot can prune")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), *(callbacks or [])]
    _fit(pruned, train_split, input_size, epochs, steps, batch_size, learning_rate, loss, callbacks, verbose,
         run_eagerly)
    kernels = [weight for layer in wrappers for weight in layer.layer.get_prunable_weights()]
    with tfmot.quantization.keras.quantize_scope(dict(_CUSTOM_OBJECTS)):
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    return stripped, zero_share(kernels)


def _prunable(layer):
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    return PruneRegistry.supports(layer) and bool(PruneRegistry._weight_names(layer))


def zero_share(weights):
    """Share of exactly-zero entries over a list of weight tensors."""
    arrays = [np.asarray(w) for w in weights]
    return sum(int((a == 0).sum()) for a in arrays) / max(sum(a.size for a in arrays), 1)


# ------------------------------------------------------------------------------------------------
# LiteRT


def export_tf_keras(tf_keras_model, path, mode="float32", input_size=None, calibration=None, output="logits",
                    num_calibration=100, class_names=None, source=None, training=None, sparsity=None):
    """Writes a tf_keras model (a QAT or pruned twin) as a builtins-only LiteRT file; returns the sidecar dict.

    `kseg.export.to_litert` does the conversion, so its guarantees hold: builtin ops only, atomic
    write, "int8" with uint8 I/O that takes raw pixels. A QAT model converts with the ranges it
    learned (calibration images only fill ranges it lacks). The sidecar adds "training" ("qat",
    "pruned" or None), "sparsity" when given, and for pruned models "gzip_bytes" (the download size).
    """
    built = tuple(tf_keras_model.inputs[0].shape[1:3])
    input_size = tuple(int(s) for s in input_size) if input_size else built
    if built != input_size:
        raise KsegError(f"{tf_keras_model.name} is built for {built[0]}x{built[1]}, not "
                        f"{input_size[0]}x{input_size[1]}")
    if training == "qat" and mode != "int8":
        raise KsegError(f"a quantization-aware trained model exports as int8, not {mode}")
    info = export.to_litert(tf_keras_model, path, mode, input_size=input_size, calibration=calibration,
                            output=output, num_calibration=num_calibration, class_names=class_names, source=source)
    info["training"] = training
    if sparsity is not None:
        info["sparsity"] = round(float(sparsity), 4)
    if training == "pruned":
        info["gzip_bytes"] = export.gzip_size(path)
    export.write_sidecar(path, info)
    return info


def qat_to_litert(model, path, train_split, input_size=None, epochs=1, steps=None, batch_size=8, learning_rate=1e-5,
                  output="logits", num_calibration=100, class_names=None, source=None, verbose=0, **options):
    """Quantization-aware training, then a full-int8 LiteRT file (uint8 I/O); returns the sidecar dict.

    `options` go to `quantization_aware_training` (loss, freeze_batch_norm, run_eagerly, callbacks).
    """
    input_size = _static_input_size(model, input_size)
    qat = quantization_aware_training(model, train_split, input_size, epochs, steps, batch_size, learning_rate,
                                      verbose=verbose, **options)
    return export_tf_keras(qat, path, "int8", input_size, calibration=train_split, output=output,
                           num_calibration=num_calibration, class_names=class_names or train_split.class_names,
                           source=source, training="qat")


def prune_to_litert(model, path, train_split, input_size=None, sparsity=0.5, mode="float32", epochs=1, steps=None,
                    batch_size=8, learning_rate=1e-4, output="logits", num_calibration=100, class_names=None,
                    source=None, verbose=0, **options):
    """Pruning while fine-tuning, then a LiteRT file in `mode` (float32, float16, dynamic, int8 or int16x8).

    Returns the sidecar dict; `options` go to `prune` (loss, exclude, freeze_batch_norm, run_eagerly, callbacks).
    """
    if mode not in export.MODES:
        raise KsegError(f"unknown export mode {mode!r}; available: {', '.join(export.MODES)}")
    input_size = _static_input_size(model, input_size)
    stripped, measured = prune(model, train_split, input_size, sparsity, epochs, steps, batch_size, learning_rate,
                               verbose=verbose, **options)
    calibration = train_split if mode in ("int8", "int16x8") else None
    return export_tf_keras(stripped, path, mode, input_size, calibration=calibration, output=output,
                           num_calibration=num_calibration, class_names=class_names or train_split.class_names,
                           source=source, training="pruned", sparsity=measured)
