"""Evaluation of `.keras`, `.tflite` and `.onnx` models alike: confusion matrix, mIoU, per-class table.

    result = kseg.runtime.evaluation.evaluate("runs/kseg/best.keras", kseg.data.load("synthetic", "val"))
    result.scores["miou"], result.table()
    kseg.runtime.evaluation.agreement("best_float32.tflite", "best_onnx.onnx", kseg.data.load("synthetic", "val"))
"""

import dataclasses

import keras
import numpy as np

import kseg.data
from kseg import metrics, report
from kseg.errors import KsegError
from kseg.runtime.predictors import predictor
from kseg.runtime.segmenter import Segmenter


@dataclasses.dataclass
class EvaluationResult:
    confusion: np.ndarray
    scores: dict
    class_names: list
    predictions: list  # a few (image, truth, prediction) triples for pictures

    def table(self):
        """A markdown table: IoU, Dice, accuracy and pixel share per class."""
        total = max(sum(self.scores["support"]), 1)
        rows = [[name, f"{100 * self.scores['iou'][i]:.2f}", f"{100 * self.scores['class_dice'][i]:.2f}",
                 f"{100 * self.scores['accuracy'][i]:.2f}", f"{100 * self.scores['support'][i] / total:.1f}%"]
                for i, name in enumerate(self.class_names)]
        return report.markdown_table(["class", "IoU", "Dice", "accuracy", "pixels"], rows)

    def to_json(self):
        return {"scores": self.scores, "class_names": self.class_names, "confusion": self.confusion.tolist()}


def evaluate(model, split, batch_size=8, num_threads=None, keep=6, progress=True, tile=None, overlap=0.25, tta=None):
    """Scores `model` (Keras model, `.keras`, `.tflite` or `.onnx` path, model folder) on a data split against its
    full-size masks, through a `kseg.Segmenter` (`tile`, `overlap`, `tta`: see it; without them a batch of
    pictures runs as one call)."""
    segmenter = Segmenter(model, tile=tile, overlap=overlap, tta=tta, threads=num_threads)
    runner = segmenter.predictor
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
        labels = np.stack(segmenter.predict_batch(images))
        confusion += metrics.confusion_matrix(masks, labels, num_classes)
        for image, mask, label in zip(images, masks, labels):
            if len(kept) < keep:
                kept.append((image.astype(np.uint8), mask, label))
        if bar:
            bar.add(len(images))
    names = split.class_names if len(split.class_names) == num_classes else [str(i) for i in range(num_classes)]
    return EvaluationResult(confusion, metrics.scores(confusion), names, kept)


def agreement(model_a, model_b, split, num_threads=None):
    """Share of pixels on which two models predict the same label (e.g. int8 against float)."""
    a, b = predictor(model_a, num_threads), predictor(model_b, num_threads)
    same = total = 0
    for images, _ in kseg.data.pipeline(split, 1).as_numpy_iterator():
        la, lb = a.labels(images), b.labels(images)
        same += int((la == lb).sum())
        total += la.size
    return same / max(total, 1)
