"""Segmentation losses over logits, for binary (1 channel) and multi-class (C channels) models.

Every loss honours an ignore label (255 by default: those pixels count for nothing) and averages
over the valid pixels of the whole batch. Losses combine with `+` and `*`:

    loss = kseg.losses.CrossEntropy(label_smoothing=0.1) + 0.5 * kseg.losses.Dice()
    model.compile("adam", loss=loss)

`y_true` holds class indices, shaped (N, H, W) or (N, H, W, 1); `y_pred` holds logits (N, H, W, C).
"""

from collections.abc import Sequence

import keras
from keras import ops

from kseg import IGNORE_LABEL
from kseg.errors import KsegError


class SegmentationLoss(keras.losses.Loss):
    """Base class: turns labels and logits into flat per-pixel tensors with a validity mask."""

    def __init__(self, ignore_label: int = IGNORE_LABEL, name: str | None = None,
                 reduction: str = "sum_over_batch_size", dtype: str | None = None):
        super().__init__(name=name or _snake(type(self).__name__), reduction=reduction, dtype=dtype)
        self.ignore_label = ignore_label

    def _flatten(self, y_true, y_pred):
        """Returns (labels (P,), valid (P,) float, logits (P, C)) with ignored labels replaced by 0."""
        num_channels = y_pred.shape[-1]
        logits = ops.reshape(ops.cast(y_pred, "float32"), (-1, num_channels))
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = ops.not_equal(labels, self.ignore_label)
        labels = ops.where(valid, labels, 0)
        return labels, ops.cast(valid, "float32"), logits

    def _probabilities(self, y_true, y_pred):
        """Returns (probs (P, K), one-hot targets (P, K), valid (P, 1)); K is 1 for binary models."""
        labels, valid, logits = self._flatten(y_true, y_pred)
        if logits.shape[-1] == 1:
            probs, targets = ops.sigmoid(logits), ops.cast(ops.expand_dims(labels, -1), "float32")
        else:
            probs, targets = ops.softmax(logits, axis=-1), ops.one_hot(labels, logits.shape[-1])
        valid = ops.expand_dims(valid, -1)
        return probs * valid, targets * valid, valid

    def __call__(self, y_true, y_pred, sample_weight=None):
        return _per_replica(super().__call__(y_true, y_pred, sample_weight))

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}

    def __add__(self, other):
        return WeightedSum([self, other])

    def __mul__(self, weight):
        return WeightedSum([self], [float(weight)])

    __rmul__ = __mul__


def _per_replica(loss):
    """A replica's share of the loss under `tf.distribute` (several GPUs or workers): Keras divides a loss by
    the replica count only when it reduces per-example values itself, yet multiplies every logged loss back.
    kseg's losses reduce over pixels inside `call`, so they divide here; elsewhere this changes nothing."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def _snake(name):
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _safe_mean(values, weights):
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


@keras.saving.register_keras_serializable(package="kseg")
class CrossEntropy(SegmentationLoss):
    """Pixel-wise cross-entropy (softmax for C > 1 channels, sigmoid for 1), with class weights and label smoothing.

    With class weights, the mean is weighted like PyTorch's: sum(w * ce) / sum(w) over valid pixels.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels, valid, logits = self._flatten(y_true, y_pred)
        num_channels = logits.shape[-1]
        if num_channels == 1:
            targets = ops.cast(labels, "float32")
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            logit = logits[:, 0]
            pixel_loss = ops.relu(logit) - logit * targets + ops.log1p(ops.exp(-ops.abs(logit)))
        else:
            targets = ops.one_hot(labels, num_channels)
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / num_channels
            pixel_loss = -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)
        weights = valid
        if self.class_weights is not None:
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        return _safe_mean(pixel_loss, weights)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="kseg")
class Focal(SegmentationLoss):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true) ** gamma; `alpha` weights classes."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gamma = float(gamma)
        self.alpha = alpha if alpha is None or isinstance(alpha, float) else [float(a) for a in alpha]

    def call(self, y_true, y_pred):
        labels, valid, logits = self._flatten(y_true, y_pred)
        if logits.shape[-1] == 1:  # binary: the two-class softmax of (0, logit) is the sigmoid
            logits = ops.concatenate([ops.zeros_like(logits), logits], axis=-1)
        log_probs = ops.log_softmax(logits, axis=-1)
        log_p_true = ops.sum(ops.one_hot(labels, logits.shape[-1]) * log_probs, axis=-1)
        pixel_loss = -((1.0 - ops.exp(log_p_true)) ** self.gamma) * log_p_true
        if isinstance(self.alpha, float):
            pixel_loss = pixel_loss * ops.where(ops.equal(labels, 0), 1.0 - self.alpha, self.alpha)
        elif self.alpha is not None:
            pixel_loss = pixel_loss * ops.take(ops.convert_to_tensor(self.alpha, "float32"), labels)
        return _safe_mean(pixel_loss, valid)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="kseg")
class Tversky(SegmentationLoss):
    """Tversky loss (Salehi et al. 2017): 1 - TP / (TP + alpha FP + beta FN), per class, over the batch.

    alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard; gamma != 1 gives the focal Tversky loss.
    Classes absent from the batch's labels are left out of the mean (they carry no signal).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0, smooth: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta, self.gamma, self.smooth = float(alpha), float(beta), float(gamma), float(smooth)

    def call(self, y_true, y_pred):
        probs, targets, _ = self._probabilities(y_true, y_pred)
        true_positive = ops.sum(probs * targets, axis=0)
        false_positive = ops.sum(probs, axis=0) - true_positive
        false_negative = ops.sum(targets, axis=0) - true_positive
        index = (true_positive + self.smooth) / (
            true_positive + self.alpha * false_positive + self.beta * false_negative + self.smooth
        )
        per_class = (1.0 - index) ** self.gamma
        present = ops.cast(ops.sum(targets, axis=0) > 0, "float32")
        return _safe_mean(per_class, present)

    def get_config(self):
        config = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "smooth": self.smooth}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kseg")
class Dice(Tversky):
    """Soft Dice loss (Milletari et al. 2016): 1 - 2|P∩T| / (|P| + |T|), averaged over present classes."""

    def __init__(self, smooth: float = 1.0, **kwargs):
        kwargs.update(alpha=0.5, beta=0.5)
        super().__init__(smooth=smooth, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("alpha", "beta"):
            config.pop(key)
        return config


@keras.saving.register_keras_serializable(package="kseg")
class Jaccard(Tversky):
    """Soft Jaccard (IoU) loss (Rahman and Wang 2016): 1 - |P∩T| / |P∪T|, averaged over present classes."""

    def __init__(self, smooth: float = 1.0, **kwargs):
        kwargs.update(alpha=1.0, beta=1.0)
        super().__init__(smooth=smooth, **kwargs)

    get_config = Dice.get_config


@keras.saving.register_keras_serializable(package="kseg")
class LovaszSoftmax(SegmentationLoss):
    """Lovász-softmax (Berman, Rannen Triki, Blaschko 2018): a convex surrogate that optimises IoU directly.

    Computed over the whole batch, averaged over the classes present in the labels.
    """

    def call(self, y_true, y_pred):
        probs, targets, valid = self._probabilities(y_true, y_pred)
        if probs.shape[-1] == 1:  # binary: foreground and background as two classes
            probs = ops.concatenate([valid - probs, probs], axis=-1)
            targets = ops.concatenate([valid - targets, targets], axis=-1)
        errors = ops.abs(targets - probs)  # zero on ignored pixels, so they add nothing below
        order = ops.argsort(-errors, axis=0)
        errors_sorted = ops.take_along_axis(errors, order, axis=0)
        targets_sorted = ops.take_along_axis(targets, order, axis=0)
        total = ops.sum(targets_sorted, axis=0, keepdims=True)
        intersection = total - ops.cumsum(targets_sorted, axis=0)
        union = total + ops.cumsum(1.0 - targets_sorted, axis=0)
        jaccard = 1.0 - intersection / ops.maximum(union, 1.0)
        gradient = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
        per_class = ops.sum(errors_sorted * ops.stop_gradient(gradient), axis=0)
        present = ops.cast(ops.sum(targets, axis=0) > 0, "float32")
        return _safe_mean(per_class, present)


@keras.saving.register_keras_serializable(package="kseg")
class WeightedSum(keras.losses.Loss):
    """A weighted sum of losses: `WeightedSum([CrossEntropy(), Dice()], [1.0, 0.5])`, or `CE() + 0.5 * Dice()`."""

    def __init__(self, losses: Sequence[keras.losses.Loss], weights: Sequence[float] | None = None,
                 name: str = "weighted_sum", reduction: str = "sum_over_batch_size", dtype: str | None = None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.losses = [keras.losses.deserialize(term) if isinstance(term, dict) else term for term in losses]
        self.weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.losses):
            raise ValueError(f"got {len(self.losses)} losses but {len(self.weights)} weights")

    def call(self, y_true, y_pred):
        return sum(w * loss(y_true, y_pred) for w, loss in zip(self.weights, self.losses))

    def _terms(self):
        return list(zip(self.weights, self.losses))

    def __add__(self, other):
        terms = self._terms() + (other._terms() if isinstance(other, WeightedSum) else [(1.0, other)])
        return WeightedSum([loss for _, loss in terms], [weight for weight, _ in terms])

    def __mul__(self, weight):
        return WeightedSum(self.losses, [w * float(weight) for w in self.weights])

    __rmul__ = __mul__

    def get_config(self):
        return {
            **super().get_config(),
            "losses": [keras.losses.serialize(term) for term in self.losses],
            "weights": self.weights,
        }


_BY_NAME = {
    "ce": CrossEntropy,
    "cross_entropy": CrossEntropy,
    "dice": Dice,
    "jaccard": Jaccard,
    "focal": Focal,
    "tversky": Tversky,
    "lovasz": LovaszSoftmax,
}


def names() -> list[str]:
    return sorted(_BY_NAME)


def get(spec: str, **kwargs) -> keras.losses.Loss:
    """A loss from a short spec: "ce", "dice", "ce+0.5*dice", "0.7*focal + 0.3*lovasz".

    `kwargs` (e.g. ignore_label) go to every term.
    """
    terms = []
    for term in spec.replace(" ", "").split("+"):
        weight, _, name = term.rpartition("*")
        if name not in _BY_NAME:
            raise KsegError(f"unknown loss {name!r} in {spec!r}; available: {', '.join(names())}")
        try:
            terms.append((float(weight) if weight else 1.0, _BY_NAME[name](**kwargs)))
        except ValueError:
            raise KsegError(f"bad weight {weight!r} in loss {spec!r}") from None
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum([loss for _, loss in terms], [weight for weight, _ in terms])
