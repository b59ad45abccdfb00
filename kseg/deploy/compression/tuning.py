"""What QAT and pruning share: fine-tuning a tf_keras twin on a kseg split, and writing it as LiteRT."""

import tensorflow as tf
import tf_keras

import kseg.data
from kseg.data.source import IGNORE_LABEL
from kseg.deploy import litert
from kseg.deploy.litert import CALIBRATION_IMAGES
from kseg.errors import KsegError
from kseg.training import recipe
from kseg.training.config import AUGMENTATIONS


class MaskedCrossEntropy(tf_keras.losses.Loss):
    """Pixel-wise cross-entropy over logits in tf_keras terms, ignoring `ignore_label` pixels.

    Softmax for C > 1 channels, sigmoid for 1; the mean is over the valid pixels of the batch
    (what `kseg.losses.CrossEntropy()` computes in Keras 3).
    """

    def __init__(self, ignore_label=IGNORE_LABEL, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        channels = y_pred.shape[-1]
        logits = tf.reshape(tf.cast(y_pred, tf.float32), [-1, channels])
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        valid = tf.not_equal(labels, self.ignore_label)
        labels = tf.where(valid, labels, 0)
        if channels == 1:
            losses = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(labels, tf.float32), logits[:, 0])
        else:
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        weights = tf.cast(valid, tf.float32)
        return tf.reduce_sum(losses * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}


def fit(model, train_split, *, input_size, epochs, steps, batch_size, learning_rate, loss=None, callbacks=(),
        verbose=0, run_eagerly=False):
    """Fine-tunes a tf_keras model with Adam on `kseg.data.pipeline(train_split, ..., training=True)`, augmented
    as `kseg.training.recipe.fine_tune` says for a short run on this data.

    `steps=None`: one pass over the split per epoch; `loss` defaults to `MaskedCrossEntropy()`.
    """
    check_classes(model, train_split)
    model.compile(tf_keras.optimizers.Adam(learning_rate), loss=MaskedCrossEntropy() if loss is None else loss,
                  run_eagerly=run_eagerly)
    model.fit(batches(train_split, batch_size, input_size, repeat=steps is not None), epochs=epochs,
              steps_per_epoch=steps, callbacks=list(callbacks or []), verbose=verbose)


def check_classes(model, train_split):
    """A KsegError unless `model` (Keras 3 or tf_keras) predicts the split's classes (or one binary logit)."""
    classes = int(model.output_shape[-1])
    if classes not in (1, train_split.num_classes):
        raise KsegError(f"{model.name} predicts {classes} classes but the training data has {train_split.num_classes}")


def batches(train_split, batch_size, input_size, repeat=True):
    """Fine-tuning batches of `train_split` at `input_size`, augmented as `kseg.training.recipe.fine_tune` says for a
    short run on this data (QAT and pruning alike)."""
    augment = AUGMENTATIONS[recipe.fine_tune(train_split)["augment"]]
    return kseg.data.pipeline(train_split, batch_size, size=input_size, training=True, repeat=repeat, **augment)


def freeze_batch_norm(layers):
    """Runs every tf_keras batch norm among `layers` on its moving statistics (small fine-tuning batches
    would otherwise pull a trained model's statistics away from it)."""
    for layer in layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False  # tf_keras runs a non-trainable batch norm in inference mode


def export_tf_keras(tf_keras_model, path, *, mode, artifact, origin=None, calibration=None,
                    num_calibration=CALIBRATION_IMAGES, training=None, sparsity=None):
    """Writes a tf_keras model (a QAT or pruned twin) as a builtins-only LiteRT file; returns the sidecar dict.

    `kseg.deploy.litert.to_litert` does the conversion, so its guarantees hold: builtin ops only, atomic
    write, "int8" with uint8 I/O that takes raw pixels. A QAT model converts with the ranges it
    learned (calibration images only fill ranges it lacks). The sidecar adds "training" ("qat",
    "pruned" or None) and "sparsity" when given.
    """
    built = tuple(tf_keras_model.inputs[0].shape[1:3])
    if built != artifact.input_size:
        raise KsegError(f"{tf_keras_model.name} is built for {built[0]}x{built[1]}, not "
                        f"{artifact.input_size[0]}x{artifact.input_size[1]}")
    if training == "qat" and mode != "int8":
        raise KsegError(f"a quantization-aware trained model exports as int8, not {mode}")
    extras = {"training": training}
    if sparsity is not None:
        extras["sparsity"] = round(float(sparsity), 4)
    return litert.to_litert(tf_keras_model, path, mode=mode, artifact=artifact, origin=origin,
                            calibration=calibration, num_calibration=num_calibration, extras=extras)
