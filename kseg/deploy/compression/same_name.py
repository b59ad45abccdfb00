"""The default tf_keras twin of a Keras 3 layer: the tf_keras layer of the same class name, built from the Keras 3
layer's config translated into tf_keras terms (`kseg.deploy.compression.bridge` falls back to it for every layer
without a registered twin; `kseg.deploy.compression.twins` reuses it).

    twin, args, kwargs = same_name_twin(keras.layers.Conv2D(8, 3, name="conv"), (x,), {})
"""

import inspect

import keras
import tf_keras

from kseg.errors import KsegError, first_line


def same_name_twin(layer, args, kwargs, subclasses=False):
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
    accepted = accepted_options(cls)
    # Initializers are dropped: the weights are copied, and custom ones (kseg's BilinearUpsampling) have
    # no tf_keras class.
    config = {k: translate(v) for k, v in layer.get_config().items()
              if k in accepted and not k.endswith("_initializer")}
    config["dtype"] = "float32"
    try:
        return cls.from_config(config), args, kwargs
    except (TypeError, ValueError) as error:
        raise KsegError(f"layer {layer.name!r} ({class_name}): its config does not fit tf_keras "
                        f"({first_line(error)})") from error


BASE_LAYER_OPTIONS = {"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights",
                       "activity_regularizer", "autocast"}


def accepted_options(cls):
    """Constructor options of a tf_keras layer class and its parents: Keras-3-only keys are dropped."""
    options = set(BASE_LAYER_OPTIONS)
    for klass in cls.__mro__:
        if issubclass(klass, tf_keras.layers.Layer) and "__init__" in vars(klass):
            options.update(inspect.signature(klass.__init__).parameters)
    return options - {"self", "args", "kwargs"}


def translate(value):
    """A Keras 3 config value in tf_keras terms: dtype policies become float32; nested objects
    (initializers, regularizers) lose Keras-3-only fields (module, registered_name, None options)."""
    if isinstance(value, dict):
        class_name = value.get("class_name")
        if class_name in ("DTypePolicy", "FloatDTypePolicy"):
            return "float32"  # tfmot and the converters want float32; mixed precision is a training matter
        if class_name is not None and "config" in value:
            config = value["config"]
            if isinstance(config, dict):
                config = {k: translate(v) for k, v in config.items() if v is not None}
            return {"class_name": class_name, "config": config}
        return {k: translate(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(translate(v) for v in value)
    return value
