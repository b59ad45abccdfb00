"""Phone GPUs: every registered architecture's float32 LiteRT file passes TensorFlow's GPU check and kseg's stricter
one (`kseg.deploy.gpu`), or is opted out below with the reason its docstring gives; kseg's check catches what
TensorFlow's analyzer lets through; `kseg export` prints the verdict and writes it into the sidecar."""

import json

import keras
import pytest
from conftest import requires_tensorflow

import kseg

pytestmark = requires_tensorflow

# Architectures whose float32 file cannot run whole on the GPU delegate: (architecture, builder overrides, reason).
# The reason is in the builder's docstring too.
OPT_OUT = {
    "segnet": "pooling-index unpooling: ARG_MAX and 6-D window tensors (the delegate takes 4-D at most)",
}
SIZE = (65, 67)  # odd on purpose: the crops and ceil sizes of odd inputs are ops too


def float32_flatbuffer(model, size=SIZE):
    from kseg.deploy import litert, modes

    return litert.litert_flatbuffer(model, mode="float32", artifact=modes.Artifact(size))


@pytest.mark.slow
@pytest.mark.parametrize("name", kseg.models.names())
def test_every_architecture_suits_the_gpu_delegate(name):
    from kseg.deploy import gpu

    report = gpu.check(float32_flatbuffer(kseg.models.get(name, 5, tiny=True)))
    if name in OPT_OUT:
        assert not report["compatible"], f"{name} is GPU-compatible now: drop it from OPT_OUT"
        assert "GPU" in kseg.models.architecture(name).build.__doc__, f"{name}'s docstring must say why"
        return
    assert report["compatible"], gpu.verdict(report)


def graph(function, *specs):
    import tensorflow as tf

    concrete = tf.function(function, input_signature=[tf.TensorSpec(*spec) for spec in specs]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def test_kseg_check_catches_what_the_analyzer_passes():
    """Seen in TF 2.21: the analyzer calls all of these compatible; kseg's check names the op and the reason."""
    import tensorflow as tf

    from kseg.deploy import gpu

    cases = {
        "TOPK_V2": (lambda x: tf.math.top_k(x, 2).values, ((1, 8, 8, 4), tf.float32)),
        "FLOOR_MOD": (lambda x: tf.math.floormod(x, 3), ((1, 8, 8, 4), tf.int32)),
        "TRANSPOSE": (lambda x: tf.transpose(tf.reshape(x, (1, 4, 2, 4, 2, 4)), (0, 1, 3, 2, 4, 5)),
                      ((1, 8, 8, 4), tf.float32)),
        "GATHER": (lambda x: tf.gather(x, [0, 2], axis=3), ((1, 8, 8, 4), tf.float32)),
        "RESIZE_BILINEAR": (lambda x: tf.compat.v1.image.resize_bilinear(x, (16, 16), align_corners=True),
                            ((1, 8, 8, 4), tf.float32)),
    }
    for op, (function, spec) in cases.items():
        report = gpu.check(graph(function, spec))
        assert not report["compatible"] and not report["kseg"]["compatible"], op
        assert op in {problem["op"] for problem in report["kseg"]["problems"]}, (op, report["kseg"]["problems"])
        assert "NOT compatible" in gpu.verdict(report)
    plain = gpu.check(graph(lambda x: tf.nn.relu(x) * 2.0 + 1.0, ((1, 8, 8, 4), tf.float32)))
    assert plain["compatible"], plain["problems"]


def test_export_prints_the_verdict_and_writes_it_into_the_sidecar(tmp_path, capsys):
    from kseg.cli import main

    keras.utils.set_random_seed(0)
    path = tmp_path / "unet.keras"
    kseg.models.get("unet", 3, tiny=True).save(path)
    assert main(["export", str(path), "--out", str(tmp_path / "out"), "--modes", "float32", "--input-size",
                 "33x35"]) == 0
    printed = capsys.readouterr().out
    assert "GPU delegate: compatible (TensorFlow's analyzer and kseg's check agree)" in printed
    info = json.loads((tmp_path / "out" / "unet_float32.tflite.json").read_text())
    assert info["gpu"]["compatible"] is True
    assert info["gpu"]["kseg"]["tool"] == "kseg.deploy.gpu.strict" and info["gpu"]["problems"] == []
    assert "TensorFlow" in info["gpu"]["analyzer"]["tool"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["gpu_compatible"] is True
