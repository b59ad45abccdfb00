"""Magnitude pruning of a Keras 3 kseg model through its tf_keras twin, and its LiteRT export.

    info = kseg.deploy.compression.prune_to_litert(model, "model_pruned.tflite", train_split=train,
                                                   artifact=kseg.deploy.modes.Artifact((257, 257)), sparsity=0.5)
"""

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from kseg.deploy import modes
from kseg.deploy.compression import bridge, tuning
from kseg.errors import KsegError

DEFAULTS = modes.ExportSettings()


def prune(model, train_split, *, input_size=None, target_sparsity=DEFAULTS.sparsity, epochs=1, steps=None,
          batch_size=DEFAULTS.batch_size, learning_rate=1e-4, loss=None, exclude=(), freeze_batch_norm=True,
          callbacks=None, verbose=0, run_eagerly=False):
    """Magnitude-prunes a Keras 3 kseg model while fine-tuning; returns (stripped tf_keras model, sparsity).

    The kernels tfmot prunes (Conv2D, Conv2DTranspose, Dense, SeparableConv2D pointwise; not
    depthwise) go from no zeros to `target_sparsity` along a polynomial schedule over the first three
    quarters of the `epochs` x `steps` batches, then fine-tune with their masks fixed. Layers named in
    `exclude` stay dense. The returned sparsity is the measured share of zeros in the pruned kernels.
    `loss`, `freeze_batch_norm` and `run_eagerly` as in `kseg.deploy.compression.quantization_aware_training`.
    """
    if not 0 <= target_sparsity < 1:
        raise KsegError(f"target sparsity must be in [0, 1), got {target_sparsity!r}")
    input_size = bridge.static_input_size(model, input_size)
    twin = bridge.to_tf_keras(model, input_size=input_size)
    if freeze_batch_norm:
        tuning.freeze_batch_norm(twin.layers)
    if steps is None:
        try:
            steps = max(1, len(train_split) // batch_size)
        except TypeError as error:
            raise KsegError("the training split has no known length: give steps") from error
    end_step = max(1, int(epochs * steps * 0.75))
    frequency = max(1, end_step // 8)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target_sparsity), begin_step=0,
        end_step=frequency * (end_step // frequency), frequency=frequency)

    def wrap(layer):
        if layer.name in exclude or not _prunable(layer):
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

    with tfmot.quantization.keras.quantize_scope(bridge.custom_objects()):
        pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    wrappers = [layer for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    if not wrappers:
        raise KsegError(f"{model.name}: no layer has kernels that tfmot can prune")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), *(callbacks or [])]
    tuning.fit(pruned, train_split, input_size=input_size, epochs=epochs, steps=steps, batch_size=batch_size,
               learning_rate=learning_rate, loss=loss, callbacks=callbacks, verbose=verbose, run_eagerly=run_eagerly)
    kernels = [weight for layer in wrappers for weight in layer.layer.get_prunable_weights()]
    with tfmot.quantization.keras.quantize_scope(bridge.custom_objects()):
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    return stripped, zero_share(kernels)


def _prunable(layer):
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    return PruneRegistry.supports(layer) and bool(PruneRegistry._weight_names(layer))


def zero_share(weights):
    """Share of exactly-zero entries over a list of weight tensors."""
    arrays = [np.asarray(w) for w in weights]
    return sum(int((a == 0).sum()) for a in arrays) / max(sum(a.size for a in arrays), 1)


def prune_to_litert(model, path, *, train_split, artifact, origin=None, sparsity=DEFAULTS.sparsity, mode="float32",
                    epochs=DEFAULTS.prune_epochs, steps=None, batch_size=DEFAULTS.batch_size, learning_rate=1e-4,
                    num_calibration=DEFAULTS.num_calibration, verbose=0, **options):
    """Pruning while fine-tuning at `artifact.input_size`, then a LiteRT file in a post-training `mode` (float32,
    float16, dynamic, int8 or int16x8). Returns the sidecar dict; `options` go to `prune` (loss, exclude,
    freeze_batch_norm, run_eagerly, callbacks)."""
    if modes.get(mode).fine_tune:
        raise KsegError(f"pruned models convert in a post-training mode ({', '.join(modes.POST_TRAINING)}), "
                        f"not {mode}")
    stripped, measured = prune(model, train_split, input_size=artifact.input_size, target_sparsity=sparsity,
                               epochs=epochs, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                               verbose=verbose, **options)
    origin = (origin or modes.Origin.of(model)).with_classes(train_split.class_names)
    return tuning.export_tf_keras(stripped, path, mode=mode, artifact=artifact, origin=origin,
                                  calibration=train_split if modes.MODES[mode].calibrates else None,
                                  num_calibration=num_calibration, training="pruned", sparsity=measured)
