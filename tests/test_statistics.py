"""kseg.models.statistics: batch-norm statistics set from images give a randomly initialised model a trained
model's activation ranges (what latency measurements of fresh models rely on)."""

import keras
import numpy as np
import pytest

import kseg
from kseg.models import statistics


@pytest.mark.parametrize("name", ["lraspp", "deeplabv3plus"])
def test_every_batch_norm_normalises_its_inputs_on_the_images(name):
    keras.utils.set_random_seed(0)
    model = kseg.models.get(name, 3, **kseg.models.architecture(name).tiny)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 80, 3)).astype("float32")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    kernels = [np.array(w) for layer in model.layers for w in layer.weights
               if not any(part in w.path for part in ("moving_mean", "moving_variance"))]

    assert statistics.set_batch_norm_statistics(model, images) == len(norms) > 0

    probe = keras.Model(model.inputs, [layer.output for layer in norms])
    for layer, out in zip(norms, probe([images], training=False)):
        out = keras.ops.convert_to_numpy(out).reshape(-1, out.shape[-1])
        gamma, beta = (np.asarray(layer.gamma), np.asarray(layer.beta))
        # inference now normalises these images as training mode did: per channel, mean beta and std |gamma|
        # (times sqrt(v / (v + epsilon)) for a channel of variance v)
        variance = np.asarray(layer.moving_variance)
        np.testing.assert_allclose(out.mean(0), beta, atol=2e-3)
        np.testing.assert_allclose(out.std(0), np.abs(gamma) * np.sqrt(variance / (variance + layer.epsilon)),
                                   rtol=2e-2, atol=1e-3, err_msg=layer.name)
    assert [layer.momentum for layer in norms] == momenta
    after = [np.array(w) for layer in model.layers for w in layer.weights
             if not any(part in w.path for part in ("moving_mean", "moving_variance"))]
    for before, now in zip(kernels, after):
        np.testing.assert_array_equal(before, now)
