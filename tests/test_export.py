"""Export: LiteRT parity with Keras, full-int8 I/O, fused label maps, Flex-op errors, SavedModel, sidecars."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import runtime
from kseg.deploy import litert, modes, rewrites, savedmodel

pytestmark = requires_tensorflow
SIZE = (48, 56)
INT8_ERROR = 0.05  # mean |int8 - float| logit error, as a share of the float logits' range


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DeepLabV3+ trained briefly on synthetic shapes (its int8 export must agree with float)."""
    keras.utils.set_random_seed(0)
    train = kseg.data.from_synthetic("train", num_images=48, size=SIZE)
    model = kseg.models.get("deeplabv3plus", 6, tiny=True)
    # Class weights: without them a short run predicts the majority class (background) everywhere,
    # and int8 agreeing with float would say nothing.
    model.compile(keras.optimizers.Adam(3e-3), loss=kseg.losses.CrossEntropy(class_weights=[0.2] + [1.0] * 5))
    model.optimizer.build(model.trainable_variables)  # outside the traced step: ~10 s less tracing
    model.fit(kseg.data.pipeline(train, 8, size=SIZE, training=True, scale_range=(0.8, 1.25)),
              epochs=12, verbose=0)
    return model, train, tmp_path_factory.mktemp("export")


def images(split, count=4):
    return [x.astype("float32") for x, _ in split.examples.take(count).as_numpy_iterator()]


@pytest.mark.slow
def test_int8_labels_agree_with_float_on_a_trained_model(trained):
    model, train, out = trained
    val = kseg.data.from_synthetic("val", num_images=8, size=SIZE)
    float_path, int8_path = str(out / "float.tflite"), str(out / "int8.tflite")
    litert.to_litert(model, float_path, mode="float32", artifact=modes.Artifact(SIZE))
    litert.to_litert(model, int8_path, mode="int8", artifact=modes.Artifact(SIZE), calibration=train,
                     num_calibration=32)
    assert kseg.runtime.evaluation.agreement(float_path, int8_path, val) > 0.95
    keras_labels = runtime.KerasPredictor(model).labels(np.stack(images(val)))
    assert len(np.unique(keras_labels)) >= 3 and (keras_labels != 0).mean() > 0.05  # not all background
    float_labels = runtime.ArtifactPredictor(float_path).labels(images(val))
    assert (keras_labels == float_labels).mean() > 0.999


@pytest.mark.slow
def test_int8_file_has_fast_uint8_ends(trained):
    """The published int8 file's uint8 ends run on XNNPACK's kernels (`kseg.deploy.rewrites.fast_uint8_ends`): the
    converter's output QUANTIZE (int8 to uint8) runs on the small tensor before the final resize, and both shifts
    between uint8 and int8 go through float32 (DEQUANTIZE, QUANTIZE); the file computes exactly what the converter's
    graph does."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model, train, out = trained
    artifact = modes.Artifact(SIZE)
    converted = litert.litert_flatbuffer(model, mode="int8", artifact=artifact, calibration=train)
    path = out / "requantized.tflite"
    litert.write_litert(converted, str(path), model=model, mode="int8", artifact=artifact)
    published = flatbuffer_utils.read_model(str(path))
    graph = published.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(published, op.opcodeIndex) for op in graph.operators]
    assert names[:2] == ["DEQUANTIZE", "QUANTIZE"] and names[-3:] == ["DEQUANTIZE", "QUANTIZE", "RESIZE_BILINEAR"]
    assert names.count("QUANTIZE") == 2 and names.count("DEQUANTIZE") == 2
    assert list(graph.tensors[graph.operators[-2].outputs[0]].shape)[1:3] != list(SIZE)  # the small tensor
    image = np.random.default_rng(0).integers(0, 256, (1, *SIZE, 3), dtype=np.uint8)
    outputs = []
    for content in (converted, path.read_bytes()):
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        assert interpreter.get_input_details()[0]["dtype"] == np.uint8
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert outputs[0].dtype == outputs[1].dtype == np.uint8 and outputs[0].shape == outputs[1].shape
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert rewrites.fast_uint8_ends(path.read_bytes()) == path.read_bytes()  # nothing left to rewrite


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float16", "dynamic", "int8"])
def test_fused_label_map_output(trained, mode):
    model, train, out = trained
    path = str(out / f"labels_{mode}.tflite")
    info = litert.to_litert(model, path, mode=mode, artifact=modes.Artifact(SIZE, output="labels"), calibration=train,
                            num_calibration=16)
    assert info["output"]["kind"] == "labels" and info["output"]["dtype"] == "uint8"
    assert info["output"]["shape"] == [1, *SIZE] and "ARG_MAX" in info["ops"]
    x = images(train, 2)
    want = runtime.KerasPredictor(model).labels(np.stack(x))
    got = runtime.ArtifactPredictor(path).labels(x)
    assert (got == want).mean() > 0.9


@pytest.mark.slow
def test_sidecar_describes_the_artifact(trained):
    model, train, out = trained
    path = str(out / "side.tflite")
    litert.to_litert(model, path, mode="float32", artifact=modes.Artifact(SIZE),
                     origin=modes.Origin(class_names=train.class_names, source="x.keras"))
    with open(path + ".json") as f:
        info = json.load(f)
    assert info["num_classes"] == 6 and info["class_names"][1] == "disc" and info["mode"] == "float32"
    assert info["input"]["shape"] == [1, *SIZE, 3] and "[0, 255]" in info["input"]["normalisation"]
    assert info["size_bytes"] == os.path.getsize(path)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_ops_litert_lacks_fail_with_their_names(tmp_path):
    import tensorflow as tf

    class ArgmaxPool(keras.layers.Layer):
        def call(self, x):
            return tf.nn.max_pool_with_argmax(x, 2, 2, "SAME")[0]

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(ArgmaxPool()(inputs)), name="argmaxnet")
    with pytest.raises(kseg.errors.ExportError) as error:
        litert.to_litert(model, str(tmp_path / "x.tflite"), mode='float32', artifact=modes.Artifact((16, 16)))
    assert "argmaxnet: float32 LiteRT export needs ops that are not LiteRT builtins: MaxPoolWithArgmax" in str(
        error.value)
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "x.tflite")


@pytest.mark.slow
def test_savedmodel_serves_inference_mode(trained):
    import tensorflow as tf

    model, train, out = trained
    path = savedmodel.save(model, str(out / "savedmodel"))
    x = np.stack(images(train, 2))
    loaded = tf.saved_model.load(path)  # keep a reference: its variables live as long as it does
    served = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(served, keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-4)


def test_unknown_mode_and_missing_calibration():
    model = kseg.models.get("unet", 2, tiny=True)
    with pytest.raises(kseg.KsegError, match="unknown export mode 'int2'"):
        litert.to_litert(model, "x.tflite", mode="int2", artifact=modes.Artifact(SIZE))
    with pytest.raises(kseg.KsegError, match="int8 export needs calibration images"):
        litert.to_litert(model, "x.tflite", mode="int8", artifact=modes.Artifact(SIZE))


@pytest.mark.slow
def test_bench_reports_latency_statistics_and_size(trained):
    model, _, out = trained
    path = str(out / "bench.tflite")
    litert.to_litert(model, path, mode="float32", artifact=modes.Artifact(SIZE))
    stats = kseg.runtime.bench.benchmark(path, threads=1, runs=5, warmup=1)
    assert stats["size_bytes"] == os.path.getsize(path) and stats["input_size"] == list(SIZE)
    assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"]


@pytest.mark.slow
def test_export_stage_writes_artifacts_and_manifest(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    checkpoint = str(tmp_path / "run" / "best.keras")
    os.makedirs(tmp_path / "run")
    model.save(checkpoint)
    kseg.provenance.write_keras_sidecar(checkpoint, "deeplabv3plus", {"tiny": True}, crop_size=list(SIZE))
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), ".."))
    from export import run as stage  # the top-level export/ stage is importable

    out = tmp_path / "artifacts"
    assert stage.main([checkpoint, "--out", str(out), "--modes", "float32", "dynamic"]) == 0  # size from the sidecar
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["mode"] for e in manifest["artifacts"]] == ["float32", "dynamic"]
    for entry in manifest["artifacts"]:
        assert os.path.getsize(out / entry["artifact"]) == entry["size_bytes"] and 0 <= entry["miou"] <= 1
        assert entry["input"]["shape"] == [1, *SIZE, 3] and entry["latency_ms"]["2"] > 0
    assert "| run_best_dynamic.tflite | dynamic |" in (out / "report.md").read_text()
    sidecar = json.loads((out / "run_best_dynamic.tflite.json").read_text())
    assert sidecar["provenance"]["architecture"] == "deeplabv3plus"
    assert sidecar["provenance"]["builder_args"] == {"tiny": True}
    assert sidecar["kseg_version"] == kseg.__version__ and sidecar["calibration"] is None


def test_every_mode_is_in_one_table():

    assert list(modes.MODES) == ["float32", "float16", "dynamic", "int8", "int16x8", "int4", "mixed", "qat_int8",
                                 "qat_int4", "pruned_float32", "pruned_int8", "onnx"]
    assert modes.POST_TRAINING == ("float32", "float16", "dynamic", "int8", "int16x8")
    assert modes.AEQ == ("int4", "mixed", "qat_int4")  # kseg.deploy.quantizer's (ai-edge-quantizer)
    assert [name for name, mode in modes.MODES.items() if mode.needs_data] == [
        "int8", "int16x8", "int4", "mixed", "qat_int8", "qat_int4", "pruned_float32", "pruned_int8"]
    with pytest.raises(kseg.KsegError, match="unknown export mode 'int2'; available: float32, "):
        modes.get("int2")


@pytest.mark.slow
def test_int8_sidecar_records_calibration_and_provenance(trained):
    model, train, out = trained
    path = str(out / "provenance.tflite")
    info = litert.to_litert(model, path, mode="int8", artifact=modes.Artifact(SIZE), calibration=train,
                            num_calibration=4)
    assert info["calibration"] == {"images": 4, "data": train.description}
    assert info["provenance"]["architecture"] == model.name and info["kseg_version"] == kseg.__version__
