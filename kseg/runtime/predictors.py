"""Labels from any trained model, a batch at a time: a Keras model or `.keras` checkpoint (`KerasPredictor`), or
an exported `.tflite` / `.onnx` file (`ArtifactPredictor`); `predictor` picks the one for a path.

    kseg.runtime.predictor("model_int8.tflite", num_threads=2).labels(images)  # uint8 (N, H, W)
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from kseg.errors import KsegError
from kseg.runtime.artifacts import ARTIFACTS, labels_from_logits, load_keras, open_artifact


class KerasPredictor:
    """Labels from a Keras model (a `.keras` path or a model), a batch at a time."""

    def __init__(self, model):
        self.model = load_keras(model) if isinstance(model, str) else model
        self.num_classes = int(self.model.output_shape[-1])
        if keras.backend.backend() == "tensorflow":
            self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        else:
            self._call = lambda x: self.model(x, training=False)

    def logits(self, images):
        """Logits (N, H, W, C) for float32 images (N, H, W, 3) in [0, 255], through one compiled call."""
        return np.asarray(self._call(np.asarray(images, np.float32)))

    def labels(self, images):
        return labels_from_logits(self.logits(images))


class ArtifactPredictor:
    """Labels from an exported file (`.tflite` or `.onnx`), one image at a time, at the file's input size."""

    def __init__(self, path, num_threads=None):
        self.runner = open_artifact(path, num_threads)
        shape = self.runner.output["shape"]
        self.num_classes = None if self.runner.output_kind == "labels" else int(shape[-1])
        sidecar = path + ".json"
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                self.num_classes = json.load(f).get("num_classes", self.num_classes)

    def labels(self, images):
        return np.stack([self.runner.labels(image) for image in images])


def predictor(model, num_threads=None):
    """A predictor for a Keras model, a `.keras` path, or an exported `.tflite` or `.onnx` path."""
    if isinstance(model, str) and os.path.splitext(model)[1].lower() in ARTIFACTS:
        return ArtifactPredictor(model, num_threads)
    if isinstance(model, str) and not model.endswith(".keras"):
        raise KsegError(f"{model}: expected a .keras, .tflite or .onnx file")
    return KerasPredictor(model)
