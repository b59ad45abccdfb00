"""Batch-norm statistics of a model set from images, so that a model with random weights has the activation
ranges of a trained one.

Why: latency measured on a freshly built model (for `kseg train --max-latency`, `benchmarks/mobile.py`) is what
a trained model costs only if its int8 file has a trained model's quantization scales. Random kernels with the
initial statistics (mean 0, variance 1) shrink activations layer after layer: in LR-ASPP MobileNetV3-Large the
inputs of hard-swish's `x + 3` reached scales near 1e-5 against the output's 0.012, outside the input/output
scale ratio XNNPACK takes for an int8 ADD, so LiteRT ran those 20 ADDs itself: 52% of the int8 call, which then
took longer than the float32 one. With each batch norm's statistics taken from the images (what training
leaves, per channel: zero mean, unit variance after normalisation), the ranges are a trained network's.

    kseg.models.statistics.set_batch_norm_statistics(model, images)   # images: (N, H, W, 3) in [0, 255]
"""

import keras
import numpy as np


def set_batch_norm_statistics(model: keras.Model, images: np.ndarray) -> int:
    """Sets the moving mean and variance of every `BatchNormalization` in `model` to those of its inputs on
    `images` (one training-mode call with momentum 0, dropout off, so each layer sees the layers before it already
    normalised); weights other than the statistics are unchanged. Returns how many layers were set.

    Example:

        model = kseg.models.get("lraspp", 21)
        kseg.models.statistics.set_batch_norm_statistics(model, numpy.random.uniform(0, 255, (4, 256, 256, 3)))
    """
    norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    dropouts = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum) for layer in norms] + [(layer, layer.rate) for layer in dropouts]
    try:
        for layer in norms:
            layer.momentum = 0.0
        for layer in dropouts:
            layer.rate = 0.0
        model(np.asarray(images, "float32"), training=True)
    finally:
        for layer, value in saved:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = value
            else:
                layer.momentum = value
    return len(norms)


def _layers(model):
    """Every layer of `model`, nested models included."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer
