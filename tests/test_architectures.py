"""The architecture contract: every registered architecture (`kseg.models.names()`) has every capability below,
tested at its tiny width. Registering an architecture is how it gets these tests; nothing else is edited.

An architecture that cannot have a capability is listed in OPT_OUTS with the reason: its test then runs as a
strict expected failure, so it fails the suite the day the capability starts working (drop the entry then).
The backend-agnostic capabilities run under TensorFlow and JAX (CI runs this file under both); export and
quantization ones are TensorFlow's.
"""

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import complexity

OPT_OUTS: dict[str, dict[str, str]] = {  # capability -> {architecture: why it cannot}
}
NUM_CLASSES = 3
SHAPES = [(64, 64), (61, 83)]  # odd sizes too: no stride may assume it divides the input
EXPORT_SIZE = (48, 56)
ODD = (41, 67)  # ONNX: odd sizes make tf2onnx's resizes inexact (kseg.deploy.onnx_export.exact_resize_sizes)
INT8_ERROR = 0.05  # mean |int8 - float| logit error, as a share of the float logits' range
ONNX_RELATIVE = 1e-4  # float32 in both runtimes; about 1e-6 of the logits' range seen


def architectures(capability):
    """`kseg.models.names()` as parameters, the opted-out ones as strict expected failures."""
    reasons = OPT_OUTS.get(capability, {})
    unknown = set(reasons) - set(kseg.models.names())
    assert not unknown, f"OPT_OUTS[{capability!r}] names unregistered architectures: {sorted(unknown)}"
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reasons[name])) if name in reasons
            else name for name in kseg.models.names()]


def tiny(name, input_shape=(None, None, 3), num_classes=NUM_CLASSES, **kwargs):
    return kseg.models.get(name, num_classes, input_shape=input_shape, tiny=True, **kwargs)


def pixels(size, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype("float32")


# Keras: any size, training, saving, arguments, cost ------------------------------------------------------------

@pytest.mark.parametrize("name", architectures("any_size"))
@pytest.mark.parametrize("size", SHAPES)
def test_output_has_input_size_and_num_classes(name, size):
    for input_shape in [(*size, 3), (None, None, 3)]:
        out = tiny(name, input_shape)(pixels(size, batch=2))
        assert tuple(out.shape) == (2, *size, NUM_CLASSES)
        assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", architectures("trains"))
def test_training_with_kseg_losses_lowers_the_loss(name):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    masks = (images.mean(-1) // 86).astype("uint8")  # a learnable rule: brightness bands
    masks[:, :4] = kseg.IGNORE_LABEL
    keras.utils.set_random_seed(0)
    model = tiny(name)
    model.compile(keras.optimizers.Adam(3e-3), loss=kseg.losses.CrossEntropy(),
                  metrics=[kseg.metrics.SegmentationMetrics(NUM_CLASSES)])
    model.optimizer.build(model.trainable_variables)  # as kseg's training does: in the traced step it costs ~10 s
    losses = model.fit(images, masks, epochs=10, batch_size=4, verbose=0).history["loss"]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name", architectures("keras_file"))
def test_keras_file_round_trip(name, tmp_path):
    model = tiny(name)
    x = pixels((61, 83))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", architectures("checks_arguments"))
@pytest.mark.parametrize("num_classes", [0, -2, 2.5, "3"])
def test_builder_rejects_a_bad_class_count_naming_it(name, num_classes):
    with pytest.raises(kseg.errors.ArgumentError, match=r"^num_classes must be a positive integer, got"):
        kseg.models.get(name, num_classes, tiny=True)


@pytest.mark.parametrize("name", architectures("macs"))
def test_macs_and_parameters_are_counted(name):
    model = tiny(name)
    report = complexity.complexity(model, (64, 64))
    assert report.macs > 0
    assert report.params == model.count_params()
    assert sum(report.by_type.values()) == report.macs


# Deployment: LiteRT float and int8, ONNX, the tf_keras bridge, qat_int4 ---------------------------------------

@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", architectures("litert_float32"))
def test_float_litert_matches_keras(name, tmp_path):
    from kseg.deploy import litert, modes

    model = tiny(name)
    x = pixels(EXPORT_SIZE)
    path = str(tmp_path / f"{name}.tflite")
    info = litert.to_litert(model, path, mode="float32", artifact=modes.Artifact(EXPORT_SIZE))
    got = kseg.runtime.LiteRTModel(path).logits(x[0])
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(x))[0], atol=1e-4, rtol=1e-4)
    assert "DELEGATE" not in info["ops"] and not any(op.startswith("FLEX") for op in info["ops"])


@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", architectures("litert_int8"))
def test_full_int8_takes_raw_pixels_and_tracks_float(name, tmp_path):
    from kseg.deploy import litert, modes

    keras.utils.set_random_seed(0)
    model = tiny(name)
    calibration = [pixels(EXPORT_SIZE, seed=i) for i in range(4)]
    calibration[0][0, 0, 0, :2] = (0, 255)
    for _ in range(20):  # batch-norm statistics of the data, as training leaves them (else outputs are ~constant)
        model(np.concatenate(calibration), training=True)
    path = str(tmp_path / "m.tflite")
    info = litert.to_litert(model, path, mode="int8", artifact=modes.Artifact(EXPORT_SIZE), calibration=calibration)
    assert info["input"]["dtype"] == "uint8" and info["output"]["dtype"] == "uint8"
    assert info["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    # The numbers, not only the types: on calibration-like images the int8 logits track the float ones.
    x = pixels(EXPORT_SIZE, seed=9)
    want = keras.ops.convert_to_numpy(model(x))[0]
    got = kseg.runtime.LiteRTModel(path).logits(x[0])
    error = np.abs(got - want).mean() / (want.max() - want.min())
    assert error < INT8_ERROR, f"int8 logits off by {100 * error:.1f}% of the float range"
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", architectures("onnx"))
def test_onnx_matches_keras(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from kseg.deploy import modes, onnx_export

    model = tiny(name)
    x = pixels(ODD, batch=2)
    path = str(tmp_path / f"{name}.onnx")
    info = onnx_export.to_onnx(model, path, artifact=modes.Artifact(ODD))
    want = keras.ops.convert_to_numpy(model(x, training=False))
    runner = kseg.runtime.OnnxModel(path)
    batch = runner.session.run(None, {runner.input["name"]: x})[0]  # any batch: the whole batch in one call
    for got, expected in ((runner.logits(x[0]), want[0]), (batch, want)):
        scale, error = float(np.abs(expected).max()), float(np.abs(got - expected).max())
        assert error <= ONNX_RELATIVE * scale, f"max |onnx - keras| = {error:.3g}, {error / scale:.2g} of max |logit|"
    assert info["ops"] and "Conv" in info["ops"]


@requires_tensorflow
@pytest.mark.parametrize("name", architectures("tf_keras_bridge"))
def test_the_tf_keras_bridge_reproduces_it(name):
    import tf_keras

    from kseg.deploy import compression

    model = tiny(name)
    twin = compression.to_tf_keras(model, EXPORT_SIZE)
    assert isinstance(twin, tf_keras.Model) and twin.input_shape == (None, *EXPORT_SIZE, 3)
    assert all(layer.dtype == "float32" for layer in twin.layers)
    assert "ResizeLike" not in {type(layer).__name__ for layer in twin.layers}
    x = pixels(EXPORT_SIZE, batch=2, seed=1)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(np.asarray(twin(x, training=False)), want, atol=1e-4 * max(1, np.abs(want).max()))


@requires_tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("name", architectures("qat_int4"))
def test_qat_int4_simulates_every_int4_kernel(name, tmp_path):
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    from kseg.deploy import litert_graph, modes, stage
    from kseg.deploy.compression import qat_int4

    split = kseg.data.from_synthetic("train", num_images=4, size=(48, 48))
    keras.utils.set_random_seed(0)
    model = tiny(name, num_classes=split.num_classes)
    assert qat_int4.int4_layers(model, (48, 48))[1] == []  # no int4 weight outside a plain Conv2D
    settings = modes.ExportSettings(num_calibration=2, qat_steps=1, batch_size=2)
    result = stage.export_artifact(model, str(tmp_path / f"{name}.tflite"), mode="qat_int4",
                                   artifact=modes.Artifact((48, 48)), train=split, settings=settings)
    assert len(result.info["fine_tune"]["simulated_layers"]) == result.info["quantizer"]["weights"]["int4"]
    with open(result.path, "rb") as f:
        graph = flatbuffer_utils.convert_bytearray_to_object(f.read()).subgraphs[0]
    stored = {litert_graph.layer_of(graph.tensors[op.inputs[1]].name.decode(), model) for op in graph.operators
              if len(op.inputs) > 1 and graph.tensors[op.inputs[1]].type == tfl.TensorType.INT4}
    assert stored == set(result.info["fine_tune"]["simulated_layers"])  # the layers rounded are the int4 ones
    out = kseg.runtime.LiteRTModel(result.path).run(np.zeros((48, 48, 3), np.float32))
    assert out.shape == (48, 48, split.num_classes)
