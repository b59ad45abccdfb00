"""QAT and pruning through the tf_keras bridge: twin parity for every architecture, a QAT int8 LiteRT
file that agrees with the float model, pruning to a measured sparsity, and one-line errors."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.deploy import modes

pytestmark = requires_tensorflow
SIZE = (48, 56)

if keras.backend.backend() == "tensorflow":
    import tf_keras

    from kseg.deploy import compression as q
    from kseg.deploy.compression import bridge


@pytest.fixture(scope="module")
def trained():
    """A tiny DeepLabV3+ trained briefly on synthetic shapes whose predictions are not all background.

    After a dozen steps the moving batch-norm statistics lag the weights (inference then predicts
    background everywhere), so they are recomputed on one batch of 32 (momentum 0): inference then
    matches training-mode predictions. Class weights keep the rarer shapes in play. Eager steps:
    tracing the training step would take longer than the dozen steps do.
    """
    keras.utils.set_random_seed(0)
    train = kseg.data.from_synthetic("train", num_images=48, size=SIZE)
    model = kseg.models.get("deeplabv3plus", 6, tiny=True)
    model.compile(keras.optimizers.Adam(1e-2), loss=kseg.losses.CrossEntropy(class_weights=[0.2] + [1.0] * 5),
                  run_eagerly=True)
    model.fit(kseg.data.pipeline(train, 8, size=SIZE, training=True, scale_range=(0.8, 1.25), repeat=True),
              epochs=1, steps_per_epoch=12, verbose=0)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    images, _ = next(iter(kseg.data.pipeline(train, 32, size=SIZE)))
    model(images, training=True)
    for layer in norms:
        layer.momentum = kseg.models.custom_layers.BN_MOMENTUM
    val = kseg.data.from_synthetic("val", num_images=8, size=SIZE)
    val_images = np.stack([x.astype("float32") for x, _ in val.examples.as_numpy_iterator()])
    return model, train, val_images


def builtins_only(ops):
    return ops and not any(op.startswith("FLEX") or "DELEGATE" in op or op == "CUSTOM" for op in ops)


@pytest.mark.slow
def test_qat_gives_an_int8_litert_file_that_agrees_with_the_float_model(trained, tmp_path):
    model, train, images = trained
    float_labels = kseg.runtime.KerasPredictor(model).labels(images)
    assert np.bincount(float_labels.ravel()).max() < 0.95 * float_labels.size  # not a constant map
    qat = q.quantization_aware_training(model, train, input_size=SIZE, steps=4, run_eagerly=True)
    path = str(tmp_path / "qat.tflite")
    info = q.export_tf_keras(qat, path, mode="int8", artifact=modes.Artifact(SIZE), calibration=train,
                             num_calibration=8, training="qat")
    assert builtins_only(info["ops"]) and "CONV_2D" in info["ops"]
    assert info["input"]["dtype"] == "uint8" and info["output"]["dtype"] == "uint8"
    assert info["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    int8_labels = kseg.runtime.ArtifactPredictor(path).labels(list(images))
    assert (int8_labels == float_labels).mean() > 0.9  # fine-tuning moves the model too: 0.94 measured
    qat_labels = np.asarray(qat(images, training=False)).argmax(-1)
    assert (int8_labels == qat_labels).mean() > 0.97  # what QAT simulates is what the file computes
    with open(path + ".json") as f:
        assert json.load(f)["training"] == "qat"


@pytest.mark.slow
def test_pruning_reaches_the_sparsity_and_exports(trained, tmp_path):
    model, train, images = trained
    stripped, sparsity = q.prune(model, train, input_size=SIZE, target_sparsity=0.5, steps=4, run_eagerly=True,
                                 loss=kseg.losses.CrossEntropy())  # Keras 3 losses work in tf_keras too
    kernels = [layer.kernel for layer in stripped.layers if type(layer).__name__ == "Conv2D"]
    assert abs(q.zero_share(kernels) - 0.5) < 0.02 and abs(sparsity - 0.5) < 0.02
    assert not any("PruneLowMagnitude" in type(layer).__name__ for layer in stripped.layers)
    path = str(tmp_path / "pruned.tflite")
    info = q.export_tf_keras(stripped, path, mode="float32", artifact=modes.Artifact(SIZE), training="pruned",
                             sparsity=sparsity)
    assert builtins_only(info["ops"])
    assert info["training"] == "pruned" and info["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert info["gzip_bytes"] < info["size_bytes"] == os.path.getsize(path)
    got = kseg.runtime.LiteRTModel(path).logits(images[0])
    np.testing.assert_allclose(got, np.asarray(stripped(images[:1], training=False))[0], atol=1e-3)


class Doubling(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def small_model(layer):
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="classifier")(layer(x)), name="small")


def test_a_layer_without_twin_is_named_on_one_line():
    with pytest.raises(kseg.KsegError) as error:
        q.to_tf_keras(small_model(Doubling(name="double")))
    assert str(error.value).startswith("layer 'double' (Doubling) has no tf_keras twin")
    assert "\n" not in str(error.value)


def test_registered_twins_plug_in_and_divergent_ones_are_located(monkeypatch):
    class TfDoubling(tf_keras.layers.Layer):
        factor = 2.0

        def call(self, x):
            return x * self.factor

    monkeypatch.setitem(bridge._TWINS, "Doubling",
                        lambda layer, args, kwargs: (TfDoubling(name=layer.name), args, kwargs))
    monkeypatch.setitem(bridge._QUANTIZE_CONFIGS, "TfDoubling", q.OutputQuantizeConfig)
    monkeypatch.setitem(bridge._CUSTOM_OBJECTS, "TfDoubling", TfDoubling)
    model = small_model(Doubling(name="double"))
    twin = q.to_tf_keras(model)
    assert "quant_double" in {layer.name for layer in q.quantize_twin(twin).layers}

    TfDoubling.factor = 3.0
    with pytest.raises(kseg.KsegError, match=r"^small: the tf_keras twin differs from layer 'double' \(Doubling\)"):
        q.to_tf_keras(model)


def test_layers_tfmot_cannot_quantize_give_one_line_errors():
    with pytest.raises(kseg.KsegError) as error:
        q.quantize_twin(q.to_tf_keras(small_model(keras.layers.GroupNormalization(2, name="group_norm"))))
    assert str(error.value).startswith("small: layer 'group_norm' (GroupNormalization) cannot be quantization-aware")
    assert "\n" not in str(error.value)

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Concatenate(name="concat")([keras.layers.Conv2D(2, 1)(inputs), keras.layers.Conv2D(2, 1)(inputs)])
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="late_bn")(x), name="late")
    with pytest.raises(kseg.KsegError, match="layer 'late_bn' .* directly after a Conv2D or DepthwiseConv2D"):
        q.quantize_twin(q.to_tf_keras(model))


def test_bridge_needs_a_size_for_size_free_models():
    model = kseg.models.get("unet", 2, tiny=True)
    with pytest.raises(kseg.KsegError, match="takes any input size: give input_size"):
        q.to_tf_keras(model)
    fixed = kseg.models.get("unet", 2, tiny=True, input_shape=(32, 32, 3))
    with pytest.raises(kseg.KsegError, match="built for 32x32 inputs, not 48x56"):
        q.to_tf_keras(fixed, SIZE)


def test_masked_cross_entropy_matches_kseg_loss():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 6, 5)).astype("uint8")
    labels[0, :2] = 255
    logits = rng.normal(size=(2, 6, 5, 4)).astype("float32")
    want = float(kseg.losses.CrossEntropy()(labels, logits))
    assert float(q.MaskedCrossEntropy()(labels, logits)) == pytest.approx(want, rel=1e-5)
