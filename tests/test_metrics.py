"""Metrics against NumPy references, streaming over batches, ignore label, binary models, fit."""

import keras
import numpy as np
import pytest

import kseg
from kseg import metrics

K = 4
rng = np.random.default_rng(1)
LABELS = rng.integers(0, K, size=(3, 8, 9))
LABELS[0, 0] = 255
LOGITS = rng.normal(size=(3, 8, 9, K)).astype("float32")
LOGITS[..., 3] -= 5  # class 3 is rarely predicted: exercises uneven rows and columns


def reference_scores(labels, logits, k=K):
    """Straight from the definitions, pixel by pixel: no confusion matrix."""
    pred = logits.argmax(-1).reshape(-1)
    true = labels.reshape(-1)
    keep = true != 255
    pred, true = pred[keep], true[keep]
    iou, dice, acc, cos, present, support = [], [], [], [], [], []
    for c in range(k):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        if tp + fp + fn:
            iou.append(tp / (tp + fp + fn))
            dice.append(2 * tp / (2 * tp + fp + fn))
            cos.append(tp / np.sqrt((tp + fp) * (tp + fn)) if tp else 0.0)
        if tp + fn:
            acc.append(tp / (tp + fn))
        support.append(np.sum(true == c))
        present.append(tp / (tp + fp + fn) if tp + fp + fn else 0.0)
    freq = np.array(support) / len(true)
    return {
        "miou": np.mean(iou), "dice": np.mean(dice), "cosine": np.mean(cos), "mean_class_accuracy": np.mean(acc),
        "pixel_accuracy": np.mean(pred == true), "fwiou": float((freq * np.array(present)).sum()),
        "iou": present,
    }


EXPECTED = reference_scores(LABELS, LOGITS)


def stream(metric):
    for i in range(3):  # three batches, one image each
        metric.update_state(LABELS[i:i + 1], LOGITS[i:i + 1])
    return keras.ops.convert_to_numpy(metric.result()) if not isinstance(metric.result(), dict) else {
        k: float(keras.ops.convert_to_numpy(v)) for k, v in metric.result().items()}


@pytest.mark.parametrize("cls, key", [
    (metrics.MeanIoU, "miou"), (metrics.PixelAccuracy, "pixel_accuracy"),
    (metrics.MeanClassAccuracy, "mean_class_accuracy"), (metrics.FrequencyWeightedIoU, "fwiou"),
    (metrics.MeanDice, "dice"), (metrics.MeanCosineSimilarity, "cosine")])
def test_single_score_metrics_match_reference(cls, key):
    assert float(stream(cls(K))) == pytest.approx(EXPECTED[key], rel=1e-5)


def test_segmentation_metrics_returns_every_score_from_one_matrix():
    result = stream(metrics.SegmentationMetrics(K))
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fwiou", "dice", "cosine"):
        assert result[key] == pytest.approx(EXPECTED[key], rel=1e-5), key


def test_per_class_iou():
    np.testing.assert_allclose(stream(metrics.PerClassIoU(K)), EXPECTED["iou"], rtol=1e-5)


def test_numpy_scores_match_reference():
    confusion = metrics.confusion_matrix(LABELS, LOGITS.argmax(-1), K)
    assert confusion.sum() == (LABELS != 255).sum()
    result = metrics.scores(confusion)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fwiou", "dice", "cosine"):
        assert result[key] == pytest.approx(EXPECTED[key], rel=1e-9), key
    np.testing.assert_allclose(result["iou"], EXPECTED["iou"])


def test_reset_and_binary_models():
    metric = metrics.MeanIoU(2)
    metric.update_state(LABELS, LOGITS)
    metric.reset_state()
    labels = np.array([[0, 1, 1, 255]])
    metric.update_state(labels, np.array([[-1.0, 2.0, -3.0, 5.0]])[..., None])  # one logit channel
    assert float(metric.result()) == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_metrics_in_fit_log_every_score():
    model = kseg.models.get("unet", K, input_shape=(16, 16, 3), tiny=True, depth=2)
    model.compile("adam", loss=kseg.losses.CrossEntropy(), metrics=[metrics.SegmentationMetrics(K)])
    x = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    y = rng.integers(0, K, (2, 16, 16))
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0).history
    assert {"miou", "val_miou", "pixel_accuracy", "val_fwiou"} <= set(history)


def test_metric_config_round_trip():
    metric = metrics.MeanIoU(5, ignore_label=0, name="iou5")
    clone = metrics.MeanIoU.from_config(metric.get_config())
    assert (clone.num_classes, clone.ignore_label, clone.name) == (5, 0, "iou5")
