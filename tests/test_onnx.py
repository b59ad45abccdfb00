"""ONNX export: parity with Keras for every architecture, labels output, sidecar, and the command line
(`kseg export --modes onnx`, then `kseg evaluate` and `kseg bench` on the `.onnx` file)."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import provenance, runtime
from kseg.cli import main
from kseg.deploy import modes, onnx_export

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")
pytestmark = requires_tensorflow
SIZE = (48, 56)
# Odd sizes, whose strides do not divide evenly: decoders resize 3 -> 11 and the like, which tf2onnx writes as
# inexact float scales (kseg.deploy.onnx_export.exact_resize_sizes; without it HRNet, RefineNet and U-Net fail here).
ODD = (41, 67)
# float32 in both runtimes, but tf2onnx folds batch norm into the convolutions and onnxruntime sums in another
# order: the largest difference seen is about 1e-6 of the logits' range. 1e-4 of that range bounds it with room.
RELATIVE = 1e-4


def assert_close(got, want):
    scale = float(np.abs(want).max())
    error = float(np.abs(got - want).max())
    assert error <= RELATIVE * scale, f"max |onnx - keras| = {error:.3g}, {error / scale:.2g} of max |logit|"


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return kseg.models.get("deeplabv3plus", 6, tiny=True)


@pytest.mark.slow
def test_labels_output_is_the_argmax_inside_the_graph(tiny_model, tmp_path):
    path = str(tmp_path / "labels.onnx")
    info = onnx_export.to_onnx(tiny_model, path, artifact=modes.Artifact(SIZE, output="labels"))
    assert info["output"] == {"kind": "labels", "name": "labels", "shape": [None, *SIZE], "dtype": "uint8",
                              "quantization": None}
    x = np.random.default_rng(1).uniform(0, 255, (*SIZE, 3)).astype("float32")
    got = runtime.OnnxModel(path).labels(x)
    want = runtime.KerasPredictor(tiny_model).labels(x[None])[0]
    assert got.dtype == np.uint8 and (got == want).mean() > 0.999


def test_sidecar_has_what_a_litert_sidecar_has(tiny_model, tmp_path):
    path = str(tmp_path / "m.onnx")
    info = onnx_export.to_onnx(tiny_model, path, artifact=modes.Artifact(SIZE),
                               origin=modes.Origin(class_names=[str(i) for i in range(6)], source="x.keras"))
    with open(path + ".json") as f:
        assert json.load(f) == info
    assert info["format"] == "onnx" and info["mode"] == "onnx" and info["num_classes"] == 6
    assert info["input"]["shape"] == [None, *SIZE, 3] and info["input"]["dtype"] == "float32"
    assert "[0, 255]" in info["input"]["normalisation"] and info["output"]["name"] == "logits"
    assert info["size_bytes"] == os.path.getsize(path) and info["opset"] >= 13
    assert info["provenance"]["checkpoint"] == "x.keras" and info["kseg_version"] == kseg.__version__
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_ops_tf2onnx_cannot_convert_fail_with_their_names(tmp_path):
    # keras.ops.argmax under TensorFlow adds a -0.0 fix made of Bitcast and BitwiseAnd: tf2onnx only logs
    # them and writes a file no runtime loads; kseg names them instead.
    inputs = keras.Input((8, 8, 3))
    outputs = keras.ops.one_hot(keras.ops.argmax(inputs, axis=-1), 3)
    model = keras.Model(inputs, outputs, name="argmaxnet")
    with pytest.raises(kseg.errors.ExportError) as error:
        onnx_export.to_onnx(model, str(tmp_path / "x.onnx"), artifact=modes.Artifact((8, 8)))
    assert "argmaxnet: ONNX export needs TensorFlow ops that tf2onnx cannot convert: Bitcast, BitwiseAnd" in str(
        error.value)
    assert os.listdir(tmp_path) == []


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(kseg.errors.KsegError, match="no such file"):
        runtime.OnnxModel(str(tmp_path / "none.onnx"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small U-Net checkpoint with its sidecar (training crop 32), and synthetic folders with 6 classes."""
    root = tmp_path_factory.mktemp("onnx_cli")
    data = root / "data"
    assert main(["data", "synth", str(data), "--num-images", "8", "--size", "32"]) == 0
    keras.utils.set_random_seed(0)
    model = kseg.models.unet(6, filters=4, depth=2)
    path = str(root / "best.keras")
    model.save(path)
    provenance.write_keras_sidecar(path, "unet", {"filters": 4, "depth": 2}, data=str(data), crop_size=[32, 32])
    return path, data


def test_export_evaluate_bench_the_onnx_file_from_the_command_line(checkpoint, tmp_path, capsys):
    path, data = checkpoint
    assert main(["export", path, "--out", str(tmp_path), "--modes", "float32", "onnx"]) == 0
    onnx_path = tmp_path / "best_onnx.onnx"
    info = json.loads((tmp_path / "best_onnx.onnx.json").read_text())
    assert info["input"]["shape"] == [None, 32, 32, 3] and info["provenance"]["architecture"] == "unet"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [entry["artifact"] for entry in manifest["artifacts"]] == ["best_float32.tflite", "best_onnx.onnx"]

    scores = {}
    for artifact in ("best_float32.tflite", "best_onnx.onnx"):
        report = tmp_path / f"{artifact}.scores.json"
        assert main(["evaluate", str(tmp_path / artifact), "--data", str(data), "--num-classes", "6",
                     "--json", str(report)]) == 0
        scores[artifact] = json.loads(report.read_text())["scores"]["miou"]
    assert abs(scores["best_float32.tflite"] - scores["best_onnx.onnx"]) < 1e-3

    out = tmp_path / "bench.json"
    assert main(["bench", str(onnx_path), "--runs", "3", "--warmup", "1", "--ops", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "invoke" in printed and "onnxruntime profiler" in printed
    stats = json.loads(out.read_text())[0]
    assert stats["runtime"] == "onnxruntime (CPU)" and stats["input_size"] == [32, 32]
    assert stats["invoke"]["mean_ms"] <= stats["mean_ms"] and stats["ops"][0]["ms"] > 0


def test_quantize_study_takes_the_onnx_mode(checkpoint, tmp_path):
    path, data = checkpoint
    out = tmp_path / "study"
    assert main(["quantize-study", path, "--data", str(data), "--num-classes", "6", "--out", str(out),
                 "--modes", "float32", "onnx", "--threads", "1", "--runs", "2"]) == 0
    rows = {row["mode"]: row for row in json.loads((out / "study.json").read_text())["rows"]}
    assert rows["onnx"]["artifact"] == "best_onnx.onnx" and rows["onnx"]["agreement"] > 0.999
    assert abs(rows["onnx"]["miou_drop"]) < 1e-3 and rows["onnx"]["latency_ms"]["1"] > 0
