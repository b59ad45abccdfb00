"""Segmentation metrics computed from one streaming confusion matrix.

In `fit`, `SegmentationMetrics` logs every score from a single matrix (val_miou, val_pixel_accuracy...):

    model.compile("adam", loss=kseg.losses.CrossEntropy(), metrics=[kseg.metrics.SegmentationMetrics(21)])

The single-score classes (`MeanIoU`, `PixelAccuracy`, ...) exist for users who want just one, and
`scores(confusion)` computes everything from a NumPy matrix (what `kseg evaluate` reports).
Rows of the matrix are true classes, columns predicted ones; pixels labelled `ignore_label` are skipped.
"""

import keras
import numpy as np
from keras import ops

from kseg import IGNORE_LABEL


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates a (num_classes, num_classes) confusion matrix; `result()` returns it.

    For a binary model (1 logit channel) use num_classes=2: a logit > 0 predicts class 1.
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL, name: str = "confusion_matrix",
                 dtype: str | None = None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="int32", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        if y_pred.shape[-1] == 1:
            predicted = ops.cast(y_pred[..., 0] > 0, "int32")
        else:
            predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predicted = ops.reshape(predicted, (-1,))
        valid = ops.logical_and(ops.not_equal(labels, self.ignore_label), ops.less(labels, k))
        valid = ops.logical_and(valid, ops.less(predicted, k))
        cells = ops.where(valid, labels * k + predicted, 0)
        counts = ops.segment_sum(ops.cast(valid, "int32"), cells, num_segments=k * k)
        self.confusion.assign_add(ops.reshape(counts, (k, k)))

    def result(self):
        return self.confusion

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), "int32"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}

    def _per_class(self):
        """(true positives, false positives, false negatives, support) per class, as float32 tensors."""
        confusion = ops.cast(self.confusion, "float32")
        true_positive = ops.diagonal(confusion)
        predicted, actual = ops.sum(confusion, axis=0), ops.sum(confusion, axis=1)
        return true_positive, predicted - true_positive, actual - true_positive, actual


def _mean_where(values, present):
    present = ops.cast(present, "float32")
    return ops.sum(ops.where(present > 0, values, 0.0)) / ops.maximum(ops.sum(present), 1.0)


def _ratio(numerator, denominator):
    return numerator / ops.maximum(denominator, 1e-12)


def _scores(tp, fp, fn, support):
    """Every scalar score from per-class counts (tensors); `scores()` is the NumPy twin."""
    union = tp + fp + fn
    iou = _ratio(tp, union)
    total = ops.maximum(ops.sum(support), 1.0)
    return {
        "miou": _mean_where(iou, union > 0),
        "pixel_accuracy": ops.sum(tp) / total,
        "mean_class_accuracy": _mean_where(_ratio(tp, support), support > 0),
        "fwiou": ops.sum(support / total * iou),
        "dice": _mean_where(_ratio(2 * tp, 2 * tp + fp + fn), union > 0),
        "cosine": _mean_where(_ratio(tp, ops.sqrt((tp + fp) * (tp + fn))), union > 0),
    }


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationMetrics(ConfusionMatrix):
    """All scalar scores from one matrix, logged as separate entries: miou, pixel_accuracy,
    mean_class_accuracy, fwiou (frequency-weighted IoU), dice (mean F1) and cosine (mean Ochiai
    coefficient TP / sqrt((TP + FP)(TP + FN))). Means run over classes that occur in labels or predictions.
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL, name: str = "segmentation_metrics",
                 dtype: str | None = None):
        super().__init__(num_classes, ignore_label, name=name, dtype=dtype)

    def result(self):
        return _scores(*self._per_class())


class _OneScore(ConfusionMatrix):
    score = ""  # the key of `_scores` a subclass reports

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL, name: str | None = None,
                 dtype: str | None = None):
        super().__init__(num_classes, ignore_label, name=name or self.score, dtype=dtype)

    def result(self):
        return _scores(*self._per_class())[self.score]


def _one_score(class_name, score, doc):
    cls = type(class_name, (_OneScore,), {"score": score, "__doc__": doc, "__module__": __name__})
    return keras.saving.register_keras_serializable(package="kseg")(cls)


MeanIoU = _one_score("MeanIoU", "miou", "Mean intersection over union over classes present in labels or predictions.")
PixelAccuracy = _one_score("PixelAccuracy", "pixel_accuracy", "Share of valid pixels labelled correctly.")
MeanClassAccuracy = _one_score("MeanClassAccuracy", "mean_class_accuracy", "Mean per-class recall.")
FrequencyWeightedIoU = _one_score("FrequencyWeightedIoU", "fwiou", "IoU per class weighted by its pixel share.")
MeanDice = _one_score("MeanDice", "dice", "Mean Dice / F1 over classes present in labels or predictions.")
MeanCosineSimilarity = _one_score(
    "MeanCosineSimilarity", "cosine", "Mean Ochiai (cosine similarity) coefficient TP / sqrt((TP+FP)(TP+FN))."
)


@keras.saving.register_keras_serializable(package="kseg")
class PerClassIoU(ConfusionMatrix):
    """IoU of every class as a vector (NaN-free: a class never seen nor predicted scores 0)."""

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL, name: str = "per_class_iou",
                 dtype: str | None = None):
        super().__init__(num_classes, ignore_label, name=name, dtype=dtype)

    def result(self):
        tp, fp, fn, _ = self._per_class()
        return _ratio(tp, tp + fp + fn)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """NumPy confusion matrix (int64) of integer label and prediction maps of the same shape."""
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    cells = labels.astype(np.int32) * num_classes + predictions  # int32 and no copy when all pixels count: 5x faster
    valid = (labels < num_classes) & (predictions < num_classes)
    if ignore_label < num_classes:
        valid &= labels != ignore_label
    if not valid.all():
        cells = cells[valid]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def scores(confusion: np.ndarray) -> dict:
    """Every score of a NumPy confusion matrix, in NumPy (float64): the scalars `SegmentationMetrics`
    logs, and per-class lists `iou`, `class_dice`, `accuracy` (recall) and `support` (true pixels)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    fp, fn, support = confusion.sum(0) - tp, confusion.sum(1) - tp, confusion.sum(1)
    union, total = tp + fp + fn, max(support.sum(), 1.0)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    def mean_where(values, present):
        return float(values[present].mean()) if present.any() else 0.0

    iou, dice = ratio(tp, union), ratio(2 * tp, 2 * tp + fp + fn)
    accuracy = ratio(tp, support)
    return {
        "miou": mean_where(iou, union > 0),
        "pixel_accuracy": float(tp.sum() / total),
        "mean_class_accuracy": mean_where(accuracy, support > 0),
        "fwiou": float((support / total * iou).sum()),
        "dice": mean_where(dice, union > 0),
        "cosine": mean_where(ratio(tp, np.sqrt((tp + fp) * (tp + fn))), union > 0),
        "iou": iou.tolist(),
        "class_dice": dice.tolist(),
        "accuracy": accuracy.tolist(),
        "support": support.astype(np.int64).tolist(),
    }
