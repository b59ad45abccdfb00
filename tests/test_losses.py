"""Losses against NumPy references; the ignore label; binary models; combination and serialization."""

import keras
import numpy as np
import pytest

import kseg
from kseg import losses

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(2, 6, 7, 4)).astype("float32")
LABELS = rng.integers(0, 4, size=(2, 6, 7)).astype("int32")
LABELS[0, :2] = 255


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_cross_entropy(logits, labels, weights=None, smoothing=0.0):
    valid = labels != 255
    lab = np.where(valid, labels, 0)
    k = logits.shape[-1]
    target = np.eye(k)[lab] * (1 - smoothing) + smoothing / k
    log_p = np.log(softmax(logits))
    ce = -(target * log_p).sum(-1)
    w = valid * (1.0 if weights is None else np.asarray(weights)[lab])
    return (ce * w).sum() / w.sum()


def np_tversky(logits, labels, alpha, beta, smooth=1.0):
    valid = (labels != 255)[..., None]
    p = softmax(logits) * valid
    t = np.eye(logits.shape[-1])[np.where(labels == 255, 0, labels)] * valid
    tp = (p * t).sum((0, 1, 2))
    fp, fn = p.sum((0, 1, 2)) - tp, t.sum((0, 1, 2)) - tp
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    present = t.sum((0, 1, 2)) > 0
    return (1 - index)[present].mean()


def np_lovasz_softmax(logits, labels):
    """Reference: Berman et al.'s lovasz_softmax_flat, filtering ignored pixels out first."""
    p = softmax(logits).reshape(-1, logits.shape[-1])
    lab = labels.reshape(-1)
    keep = lab != 255
    p, lab = p[keep], lab[keep]
    per_class = []
    for c in range(p.shape[1]):
        fg = (lab == c).astype(float)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum()
        union = gts + (1 - fg_sorted).cumsum()
        jaccard = 1 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        per_class.append(np.dot(errors[order], jaccard))
    return np.mean(per_class)


def value(loss, labels=LABELS, logits=LOGITS):
    return float(keras.ops.convert_to_numpy(loss(labels, logits)))


def test_cross_entropy_matches_numpy():
    assert value(losses.CrossEntropy()) == pytest.approx(np_cross_entropy(LOGITS, LABELS), rel=1e-5)


def test_cross_entropy_class_weights_and_label_smoothing():
    loss = losses.CrossEntropy(class_weights=[1, 2, 0.5, 3], label_smoothing=0.1)
    assert value(loss) == pytest.approx(np_cross_entropy(LOGITS, LABELS, [1, 2, 0.5, 3], 0.1), rel=1e-5)


@pytest.mark.parametrize("loss, alpha, beta", [
    (losses.Dice(), 0.5, 0.5), (losses.Jaccard(), 1.0, 1.0), (losses.Tversky(0.3, 0.7), 0.3, 0.7)])
def test_region_losses_match_numpy(loss, alpha, beta):
    assert value(loss) == pytest.approx(np_tversky(LOGITS, LABELS, alpha, beta), rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy_and_gamma_lowers_easy_pixels():
    assert value(losses.Focal(gamma=0.0)) == pytest.approx(value(losses.CrossEntropy()), rel=1e-5)
    assert value(losses.Focal(gamma=2.0)) < value(losses.CrossEntropy())


def test_lovasz_softmax_matches_reference():
    assert value(losses.LovaszSoftmax()) == pytest.approx(np_lovasz_softmax(LOGITS, LABELS), rel=1e-4)


@pytest.mark.parametrize("loss", [losses.CrossEntropy(), losses.Dice(), losses.Jaccard(), losses.Focal(),
                                  losses.Tversky(), losses.LovaszSoftmax()])
def test_ignored_pixels_do_not_count(loss):
    changed = LOGITS.copy()
    changed[0, :2] = rng.normal(size=changed[0, :2].shape) * 10  # only where labels are 255
    assert value(loss, logits=changed) == pytest.approx(value(loss), rel=1e-5)


@pytest.mark.parametrize("loss", [losses.CrossEntropy(), losses.Dice(), losses.Jaccard(), losses.Focal(),
                                  losses.Tversky(), losses.LovaszSoftmax()])
def test_perfect_logits_score_lower_than_wrong_ones(loss):
    perfect = np.eye(4)[np.where(LABELS == 255, 0, LABELS)].astype("float32") * 20
    wrong = np.roll(perfect, 1, axis=-1)
    assert value(loss, logits=perfect) < 0.05 < value(loss, logits=wrong)


@pytest.mark.parametrize("loss", [losses.CrossEntropy(), losses.Dice(), losses.Focal(), losses.LovaszSoftmax()])
def test_binary_models_with_one_logit_channel(loss):
    labels = (LABELS % 2).astype("int32")
    labels[0, :2] = 255
    good = np.where(labels == 1, 8.0, -8.0)[..., None].astype("float32")
    assert value(loss, labels, good) < 0.05 < value(loss, labels, -good)


def test_binary_cross_entropy_matches_numpy():
    labels = (LABELS % 2).astype("float64")
    logit = LOGITS[..., :1]
    valid = LABELS != 255
    p = 1 / (1 + np.exp(-logit[..., 0]))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = bce[valid].mean()
    labels_in = np.where(valid, labels, 255).astype("int32")
    assert value(losses.CrossEntropy(), labels_in, logit) == pytest.approx(expected, rel=1e-5)


def test_weighted_sums_by_operators_and_by_spec():
    combined = losses.CrossEntropy() + 0.5 * losses.Dice()
    expected = value(losses.CrossEntropy()) + 0.5 * value(losses.Dice())
    assert value(combined) == pytest.approx(expected, rel=1e-5)
    assert value(losses.get("ce+0.5*dice")) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(kseg.KsegError, match="unknown loss 'dic'"):
        losses.get("ce+dic")


def test_labels_with_a_channel_axis_are_accepted():
    assert value(losses.Dice(), LABELS[..., None]) == pytest.approx(value(losses.Dice()), rel=1e-6)


@pytest.mark.parametrize("loss", [losses.CrossEntropy(class_weights=[1, 2, 3, 4], label_smoothing=0.1),
                                  losses.Tversky(0.3, 0.7, gamma=0.75), losses.Focal(alpha=0.25),
                                  losses.CrossEntropy() + 0.5 * losses.LovaszSoftmax()])
def test_serialization_round_trip(loss):
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss)
    assert value(clone) == pytest.approx(value(loss), rel=1e-6)
