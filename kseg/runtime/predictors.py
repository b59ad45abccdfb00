"""Logits and labels from any trained model, a batch at a time: a Keras model, a `.keras` checkpoint or a model
folder / `hf://` handle (`KerasPredictor`), or an exported `.tflite` / `.onnx` file (`ArtifactPredictor`);
`predictor` picks the one for a path. `kseg.Segmenter` builds pictures, tiles and test-time augmentation on them.

    kseg.runtime.predictor("model_int8.tflite", num_threads=2).labels(images)  # uint8 (N, H, W)

Each says what it takes: `input_size` (the fixed (height, width) it runs at, or None for any size),
`trained_size` (the training crop or export size, when recorded), `batched` (whether a batch runs as one call)
and `num_classes`.
"""

import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from kseg import files, provenance
from kseg.errors import KsegError
from kseg.runtime.artifacts import ARTIFACTS, labels_from_logits, load_keras, open_artifact


class KerasPredictor:
    """Labels from a Keras model (a `.keras` path or a model), a batch at a time; `trained_size` from the
    checkpoint's sidecar or run (`kseg.provenance.of_checkpoint`) unless given."""

    batched = True

    def __init__(self, model: "keras.Model | str", trained_size: tuple[int, int] | None = None):
        path = model if isinstance(model, str) else None
        self.model: keras.Model = load_keras(model) if isinstance(model, str) else model
        self.num_classes = int(self.model.output_shape[-1])
        height, width = self.model.input_shape[1:3]
        self.input_size = (int(height), int(width)) if height and width else None
        crop = trained_size or (provenance.of_checkpoint(path).get("crop_size") if path else None)
        self.trained_size = tuple(crop) if crop else self.input_size
        if keras.backend.backend() == "tensorflow":  # one trace for every size: tiles and scales vary it
            spec = tf.TensorSpec([None, *(self.input_size or (None, None)), 3], tf.float32)
            self._call: Callable = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        else:
            self._call = lambda x: self.model(x, training=False)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, H, W, C) for float32 images (N, H, W, 3) in [0, 255], through one compiled call (a model
        built for one size gets the images resized to it, and its logits resized back)."""
        images = np.asarray(images, np.float32)
        size = images.shape[1:3]
        if self.input_size and size != self.input_size:
            return tf.image.resize(self._call(tf.image.resize(images, self.input_size)), size).numpy()
        return np.asarray(self._call(images))

    def labels(self, images: np.ndarray) -> np.ndarray:
        return labels_from_logits(self.logits(images))


class ArtifactPredictor:
    """Labels from an exported file (`.tflite` or `.onnx`), one image at a time, at the file's input size."""

    batched = False

    def __init__(self, path: str, num_threads: int | None = None):
        self.runner = open_artifact(path, num_threads)
        shape = self.runner.output["shape"]
        self.num_classes = None if self.runner.output_kind == "labels" else int(shape[-1])
        self.num_classes = (files.read_json(path + ".json") or {}).get("num_classes", self.num_classes)
        self.input_size = self.trained_size = self.runner.input_size
        self.outputs_labels = self.runner.output_kind == "labels"

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, H, W, C) at each image's size (resized to the file's input and back)."""
        return np.stack([self.runner.logits(image) for image in images])

    def labels(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.runner.labels(image) for image in images])


def predictor(model: "keras.Model | str", num_threads: int | None = None) -> "KerasPredictor | ArtifactPredictor":
    """A predictor for a Keras model, a `.keras` path, a model folder or `hf://` handle
    (`kseg.models.save_pretrained`), or an exported `.tflite` or `.onnx` path."""
    if not isinstance(model, str):
        return KerasPredictor(model)
    if os.path.splitext(model)[1].lower() in ARTIFACTS:
        return ArtifactPredictor(model, num_threads)
    if model.endswith(".keras"):
        return KerasPredictor(model)
    from kseg.models import hub, pretrained

    if os.path.isdir(model) or hub.is_hub(model):
        loaded = pretrained.load(model)
        return KerasPredictor(loaded.model, trained_size=loaded.config.get("input", {}).get("trained_size"))
    raise KsegError(f"{model}: expected a .keras, .tflite or .onnx file, or a model folder")
