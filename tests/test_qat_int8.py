"""qat_int8 in Keras 3 (issue 16): the fake-quant simulation mirrors the int8 file, batch norm folding is exact,
depthwise ranges are per channel, the guard keeps the better file, and every architecture exports."""

import json

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.deploy import modes

pytestmark = requires_tensorflow
SIZE = (48, 48)

if keras.backend.backend() == "tensorflow":
    from kseg.deploy import litert
    from kseg.deploy.compression import fake_quant, qat_int8


@pytest.fixture(scope="module")
def trained():
    """A tiny DeepLabV3+ trained a dozen eager steps on synthetic shapes, batch-norm statistics recomputed on one
    batch (see tests/test_quantization.py's fixture), with its calibration images."""
    keras.utils.set_random_seed(0)
    train = kseg.data.from_synthetic("train", num_images=48, size=SIZE)
    model = kseg.models.get("deeplabv3plus", 6, tiny=True)
    model.compile(keras.optimizers.Adam(1e-2), loss=kseg.losses.CrossEntropy(class_weights=[0.2] + [1.0] * 5),
                  run_eagerly=True)
    model.fit(kseg.data.pipeline(train, 8, size=SIZE, training=True, scale_range=(0.8, 1.25),
                                   repeat=True), epochs=1, steps_per_epoch=12, verbose=0)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(next(iter(kseg.data.pipeline(train, 32, size=SIZE)))[0], training=True)
    for layer in norms:
        layer.momentum = kseg.models.custom_layers.BN_MOMENTUM
    images, masks = litert.calibration_pairs(train, SIZE, 16)
    return model, train, images, masks


def test_batch_norm_folding_is_exact_in_float(trained):
    model, _, images, _ = trained
    folded, record = fake_quant.simulate(model, quantize=False)
    assert len(record["folded"]) > 20 and not any(isinstance(layer, keras.layers.BatchNormalization)
                                                  for layer in folded.layers if layer.name in record["folded"].values())
    batch = np.concatenate(images[:4])
    want, got = np.asarray(model(batch, training=False)), np.asarray(folded(batch, training=False))
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))


def test_depthwise_ranges_are_per_channel():
    layer = fake_quant.FoldedDepthwiseConv2D(kernel_size=3, depth_multiplier=2, use_bias=False)
    layer.build((1, 8, 8, 3))
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 2)).astype("float32")
    kernel[..., 0, 1] *= 100.0  # one channel with a range 100x the others'
    layer.set_weights([kernel])
    rounded = np.asarray(fake_quant.symmetric_per_channel(keras.ops.convert_to_tensor(kernel), 8, (0, 1)))
    for i in range(3):
        for m in range(2):
            step = np.abs(kernel[..., i, m]).max() / 127
            assert np.abs(rounded[..., i, m] - kernel[..., i, m]).max() <= step / 2 + 1e-6  # its own range
    x = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 3)).astype("float32")
    want = keras.ops.depthwise_conv(x, rounded, strides=1, padding="valid")
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), atol=1e-5)


def test_new_layers_round_trip_through_keras_files(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = fake_quant.FoldedConv2D(filters=4, kernel_size=3, fold_batch_norm=True, epsilon=1e-3)(inputs)
    x = fake_quant.ActivationFakeQuant(low=-2.0, high=3.0)(x)
    x = fake_quant.FoldedDepthwiseConv2D(kernel_size=3, padding="same", fold_batch_norm=True)(x)
    x = fake_quant.FoldedDense(units=2, quantize=False)(x)
    model = keras.Model(inputs, x)
    model.set_weights([w + 0.1 for w in model.get_weights()])
    path = str(tmp_path / "fq.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.layers[2].get_config()["high"] == 3.0


def test_activation_grid_holds_zero_on_an_integer_point():
    scale, lowest, highest = fake_quant.activation_grid(0.5, 6.0)
    assert lowest <= 0.0 < highest and abs(round(-lowest / scale) - (-lowest / scale)) < 1e-6
    assert abs((highest - lowest) / scale - 255) < 1e-6


@pytest.mark.slow
def test_the_simulation_mirrors_the_int8_file_and_the_guard_keeps_the_better(trained, tmp_path):
    model, train, images, masks = trained
    labels = np.asarray(model(np.concatenate(images), training=False)).argmax(-1)
    assert np.bincount(labels.ravel()).max() < 0.95 * labels.size  # not a constant map
    simulated, _ = fake_quant.simulate(model, images=images)
    path = str(tmp_path / "int8.tflite")
    litert.to_litert(model, path, mode="int8", artifact=modes.Artifact(SIZE), calibration=images)
    file_labels = kseg.runtime.ArtifactPredictor(path).labels([image[0] for image in images])
    sim_labels = np.asarray(simulated(np.concatenate(images), training=False)).argmax(-1)
    assert (file_labels == sim_labels).mean() >= 0.97  # the simulation is the file's arithmetic
    settings = modes.ExportSettings(num_calibration=16)
    info = qat_int8.int8_qat_to_litert(model, str(tmp_path / "qat.tflite"), train_split=train,
                                       artifact=modes.Artifact(SIZE), settings=settings, steps=3)
    tune = info["fine_tune"]
    assert tune["kept"] in ("qat", "post-training")
    assert max(tune["qat_miou"], tune["post_training_miou"]) == tune[f"{tune['kept'].replace('-', '_')}_miou"]
    kept = qat_int8.calibration_miou((tmp_path / "qat.tflite").read_bytes(), images, masks, 6)
    assert kept >= tune["post_training_miou"] - 0.01  # never below post-training int8 on the calibration images
    with open(str(tmp_path / "qat.tflite") + ".json") as f:
        assert json.load(f)["fine_tune"]["kept"] == tune["kept"]


@pytest.mark.slow
def test_the_guard_keeps_post_training_int8_when_the_fine_tune_hurts(trained, tmp_path, monkeypatch):
    model, train, _, _ = trained

    def harmful(model, train_split, **_):  # a fine-tune that overfits: here, the logits negated
        tuned = keras.models.clone_model(model)
        tuned.set_weights(model.get_weights())
        last = [layer for layer in tuned.layers if isinstance(layer, keras.layers.Conv2D)][-1]
        last.set_weights([-w for w in last.get_weights()])
        return tuned, {"steps": 0}

    monkeypatch.setattr(qat_int8, "int8_aware_training", harmful)
    info = qat_int8.int8_qat_to_litert(model, str(tmp_path / "qat.tflite"), train_split=train,
                                       artifact=modes.Artifact(SIZE), settings=modes.ExportSettings(num_calibration=8))
    tune = info["fine_tune"]
    assert tune["qat_miou"] < tune["post_training_miou"] and tune["kept"] == "post-training"


@pytest.mark.slow
@pytest.mark.parametrize("name", kseg.models.names())
def test_every_architecture_exports_in_qat_int8(name, tmp_path):
    train = kseg.data.from_synthetic("train", num_images=8, size=SIZE)
    model = kseg.models.get(name, 6, **dict(kseg.models.architecture(name).tiny))
    settings = modes.ExportSettings(num_calibration=4, qat_steps=2, batch_size=2)
    info = kseg.deploy.stage.convert(model, str(tmp_path / f"{name}.tflite"), mode="qat_int8",
                                     artifact=modes.Artifact(SIZE), train=train, settings=settings)
    assert info["fine_tune"]["simulated_layers"] > 0 and info["input"]["dtype"] == "uint8"
