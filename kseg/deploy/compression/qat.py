"""Quantization-aware training (QAT) of a Keras 3 kseg model through its tf_keras twin (tfmot), and its int8 export.

No export mode uses this path any more: `qat_int8` is `kseg.deploy.compression.qat_int8`'s Keras 3 fake-quant
fine-tune (issue 16: here tfmot gives depthwise kernels one range for all channels before batch norm is folded,
and DeepLabV3+ lost 0.5-2 mIoU where post-training int8 lost none). It stays for comparison
(`benchmarks/qat_int8.py`'s old column) and for code that calls it:

    artifact = kseg.deploy.modes.Artifact((257, 257))
    info = kseg.deploy.compression.qat_to_litert(model, "model_qat.tflite", train_split=train, artifact=artifact,
                                                 steps=500)

or step by step:

    qat = kseg.deploy.compression.quantization_aware_training(model, train, input_size=(257, 257), steps=500)
    kseg.deploy.compression.export_tf_keras(qat, "model_qat.tflite", mode="int8", artifact=artifact,
                                            calibration=train, training="qat")
"""

import re

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kseg.deploy import litert, modes
from kseg.deploy.compression import bridge, tuning
from kseg.deploy.modes import QAT_LEARNING_RATE, ExportSettings
from kseg.errors import KsegError, first_line

DEFAULTS = ExportSettings()


def quantize_twin(twin):
    """tfmot's `quantize_model` on a tf_keras twin, with kseg's QuantizeConfigs for layers tfmot lacks.

    tfmot's refusals (a layer it cannot quantize, a batch norm that follows no convolution) become
    one-line KsegErrors that name the layer.
    """
    qkeras = tfmot.quantization.keras

    def annotate(layer):
        config = bridge.quantize_config(layer)
        return qkeras.quantize_annotate_layer(layer, config) if config else layer

    with qkeras.quantize_scope(bridge.custom_objects()):
        try:
            annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
            return qkeras.quantize_apply(qkeras.quantize_annotate_model(annotated))
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise _tfmot_error(twin, error) from error


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
                         "kseg.deploy.compression.register_quantize_config)")
    return KsegError(f"{model.name}: quantization-aware training is not possible: {first_line(error)}")


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


def quantization_aware_training(model, train_split, *, input_size=None, epochs=1, steps=DEFAULTS.qat_steps,
                                batch_size=DEFAULTS.batch_size, learning_rate=QAT_LEARNING_RATE["int8"], loss=None,
                                num_calibration=16, freeze_batch_norm=True, callbacks=None, verbose=0,
                                run_eagerly=False):
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
    Export with `export_tf_keras(qat, path, mode="int8", artifact=..., training="qat")`.
    """
    input_size = bridge.static_input_size(model, input_size)
    twin = bridge.to_tf_keras(model, input_size=input_size)
    qat = quantize_twin(twin)
    initialise_ranges(qat, twin, litert.calibration_images(train_split, input_size, num_calibration))
    if freeze_batch_norm:
        tuning.freeze_batch_norm(getattr(wrapper, "layer", None) for wrapper in qat.layers)
    tuning.fit(qat, train_split, input_size=input_size, epochs=epochs, steps=steps, batch_size=batch_size,
               learning_rate=learning_rate, loss=loss, callbacks=callbacks, verbose=verbose, run_eagerly=run_eagerly)
    _pin_input_range(qat)
    return qat


def qat_to_litert(model, path, *, train_split, artifact, origin=None, epochs=1, steps=DEFAULTS.qat_steps,
                  batch_size=DEFAULTS.batch_size, learning_rate=QAT_LEARNING_RATE["int8"],
                  num_calibration=DEFAULTS.num_calibration, verbose=0, **options):
    """Quantization-aware training at `artifact.input_size`, then a full-int8 LiteRT file; returns the sidecar dict.

    `options` go to `quantization_aware_training` (loss, freeze_batch_norm, run_eagerly, callbacks).
    """
    qat = quantization_aware_training(model, train_split, input_size=artifact.input_size, epochs=epochs, steps=steps,
                                      batch_size=batch_size, learning_rate=learning_rate, verbose=verbose, **options)
    origin = (origin or modes.Origin.of(model)).with_classes(train_split.class_names)
    return tuning.export_tf_keras(qat, path, mode="int8", artifact=artifact, origin=origin, calibration=train_split,
                                  num_calibration=num_calibration, training="qat")
