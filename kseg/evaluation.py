"""Evaluation of `.keras` and `.tflite` models alike: confusion matrix, mIoU, per-class table, pictures.

    result = kseg.evaluation.evaluate("runs/kseg/best.keras", kseg.data.load("synthetic", "val"))
    result.scores["miou"], result.table()
"""

import dataclasses
import json
import os

import keras
import numpy as np

import kseg
from kseg.errors import KsegError


class KerasPredictor:
    """Labels from a Keras model (a `.keras` path or a model), a batch at a time."""

    def __init__(self, model):
        if isinstance(model, str):
            if not os.path.exists(model):
                raise KsegError(f"{model}: no such file")
            try:
                model = keras.saving.load_model(model, compile=False)
            except Exception as error:
                raise KsegError(f"{model}: cannot load Keras model ({str(error).splitlines()[0]})") from None
        self.model = model
        self.num_classes = int(model.output_shape[-1])
        self._predict = _compiled_call(model)

    def labels(self, images):
        logits = np.asarray(self._predict(np.asarray(images, np.float32)))
        return (logits[..., 0] > 0 if logits.shape[-1] == 1 else logits.argmax(-1)).astype(np.uint8)


def _compiled_call(model):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: model(x, training=False)


class LiteRTPredictor:
    """Labels from a `.tflite` file, one image at a time (LiteRT models have a fixed batch of 1)."""

    def __init__(self, path, num_threads=None):
        from kseg.export import LiteRTModel

        self.runner = LiteRTModel(path, num_threads=num_threads)
        shape = self.runner.output["shape"]
        self.num_classes = None if self.runner.output_kind == "labels" else int(shape[-1])
        sidecar = path + ".json"
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                self.num_classes = json.load(f).get("num_classes", self.num_classes)

    def labels(self, images):
        return np.stack([self.runner.labels(image) for image in images])


def predictor(model, num_threads=None):
    """A predictor for a Keras model, a `.keras` path or a `.tflite` path."""
    if isinstance(model, str) and model.endswith(".tflite"):
        return LiteRTPredictor(model, num_threads)
    if isinstance(model, str) and not model.endswith(".keras"):
        raise KsegError(f"{model}: expected a .keras or .tflite file")
    return KerasPredictor(model)


@dataclasses.dataclass
class EvaluationResult:
    confusion: np.ndarray
    scores: dict
    class_names: list
    predictions: list  # a few (image, truth, prediction) triples for pictures

    def table(self):
        """A markdown table: IoU, Dice, accuracy and pixel share per class."""
        total = max(sum(self.scores["support"]), 1)
        lines = ["| class | IoU | Dice | accuracy | pixels |", "|---|---:|---:|---:|---:|"]
        for i, name in enumerate(self.class_names):
            lines.append(
                f"| {name} | {100 * self.scores['iou'][i]:.2f} | {100 * self.scores['class_dice'][i]:.2f} "
                f"| {100 * self.scores['accuracy'][i]:.2f} | {100 * self.scores['support'][i] / total:.1f}% |"
            )
        return "\n".join(lines)

    def to_json(self):
        return {"scores": self.scores, "class_names": self.class_names, "confusion": self.confusion.tolist()}


def evaluate(model, split, batch_size=8, num_threads=None, keep=6, progress=True):
    """Scores `model` (Keras model, `.keras` or `.tflite` path) on a data split against its full-size masks."""
    runner = predictor(model, num_threads)
    num_classes = split.num_classes
    if runner.num_classes not in (None, 1) and runner.num_classes != num_classes:
        raise KsegError(f"the model predicts {runner.num_classes} classes but the data has {num_classes}")
    if runner.num_classes == 1:
        num_classes = 2
    batches = kseg.data.pipeline(split, batch_size if split.image_size else 1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    kept = []
    bar = keras.utils.Progbar(split.length, verbose=int(progress), unit_name="image") if progress else None
    for images, masks in batches.as_numpy_iterator():
        labels = runner.labels(images)
        confusion += kseg.metrics.confusion_matrix(masks, labels, num_classes)
        for image, mask, label in zip(images, masks, labels):
            if len(kept) < keep:
                kept.append((image.astype(np.uint8), mask, label))
        if bar:
            bar.add(len(images))
    names = split.class_names if len(split.class_names) == num_classes else [str(i) for i in range(num_classes)]
    return EvaluationResult(confusion, kseg.metrics.scores(confusion), names, kept)


def agreement(model_a, model_b, split, num_threads=None):
    """Share of pixels on which two models predict the same label (e.g. int8 against float)."""
    a, b = predictor(model_a, num_threads), predictor(model_b, num_threads)
    same = total = 0
    for images, _ in kseg.data.pipeline(split, 1).as_numpy_iterator():
        la, lb = a.labels(images), b.labels(images)
        same += int((la == lb).sum())
        total += la.size
    return same / max(total, 1)


def confusion_figure(result, path):
    """Saves the row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = result.confusion.astype(np.float64)
    normalised = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(result.class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(result.class_names)), result.class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(result.class_names)), result.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(normalised):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"confusion (rows sum to 1), mIoU {100 * result.scores['miou']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
