"""ai-edge-quantizer modes (kseg.deploy.quantizer): int4 weights, mixed precision chosen by measurement, float
denylists.

The model is a three-convolution colour segmenter trained for a few seconds on coloured blobs (so float32
scores high and a drop means something); `outlier` is the same function with one feature channel scaled by
1000 and the next layer's weights divided by 1000 (ReLU commutes with the scale: float32 is unchanged), so
full int8 loses the other channels in that tensor's per-tensor scale, which mixed has to find and undo.
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import runtime
from kseg.deploy import litert_graph, modes, quantizer

pytestmark = requires_tensorflow
SIZE = (48, 56)
CLASSES = ["background", "red", "blue"]


def colour_split(count, seed):
    """Grey noisy backgrounds with red and blue rectangles (classes 1 and 2): a Split of uint8 arrays."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = rng.uniform(70, 150, (count, *SIZE, 3))
    masks = np.zeros((count, *SIZE), np.uint8)
    for i in range(count):
        for label, colour in ((1, (210, 50, 60)), (2, (50, 70, 210))):
            for _ in range(2):
                y, x = rng.integers(0, SIZE[0] - 10), rng.integers(0, SIZE[1] - 10)
                h, w = rng.integers(6, 16, 2)
                images[i, y:y + h, x:x + w] = np.asarray(colour) + rng.normal(0, 12, (min(h, SIZE[0] - y),
                                                                                      min(w, SIZE[1] - x), 3))
                masks[i, y:y + h, x:x + w] = label
    images = np.clip(images, 0, 255).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices((images, masks))
    return kseg.data.Split(examples, 3, CLASSES, length=count, description=f"colour blobs (seed {seed})",
                           image_size=SIZE, in_memory=True)


@pytest.fixture(scope="module")
def data():
    return colour_split(32, 0), colour_split(12, 1)


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="mixer")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="classifier")(x), name="colours")
    model.compile(keras.optimizers.Adam(2e-2), loss=kseg.losses.CrossEntropy())
    model.optimizer.build(model.trainable_variables)  # outside the traced step: ~10 s less tracing
    model.fit(kseg.data.pipeline(data[0], 8, size=SIZE, training=False), epochs=25, verbose=0)
    return model


@pytest.fixture(scope="module")
def outlier(model, data):
    """`model` with its busiest feature channel scaled by 1000 (the mixer's weights from it divided by 1000)."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    x = np.stack([image for image, _ in data[0].examples.take(8).as_numpy_iterator()]).astype("float32")
    features = keras.Model(twin.input, twin.get_layer("features").output)(x)
    channel = int(np.argmax(keras.ops.convert_to_numpy(features).mean((0, 1, 2))))
    kernel, bias = twin.get_layer("features").get_weights()
    kernel[..., channel] *= 1000
    bias[channel] *= 1000
    twin.get_layer("features").set_weights([kernel, bias])
    kernel, bias = twin.get_layer("mixer").get_weights()
    kernel[:, :, channel, :] /= 1000
    twin.get_layer("mixer").set_weights([kernel, bias])
    return twin


def miou(path, split):
    return 100 * kseg.runtime.evaluation.evaluate(path, split, progress=False).scores["miou"]


def test_the_new_modes_are_in_the_one_table():
    assert modes.AEQ == ("int4", "mixed", "qat_int4")
    assert all(modes.MODES[name].calibrates and modes.MODES[name].format == "litert" for name in modes.AEQ)
    assert not set(modes.AEQ) & set(modes.POST_TRAINING)
    with pytest.raises(kseg.KsegError, match="'qat_int4' fine-tunes first: export it with kseg.deploy.stage.convert"):
        quantizer.to_litert(keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)]), "x.tflite",
                            mode="qat_int4", artifact=modes.Artifact((4, 4)),
                            calibration=[np.zeros((1, 4, 4, 3), np.float32)])
    with pytest.raises(kseg.KsegError, match="ai-edge-quantizer's"):
        kseg.deploy.litert.litert_converter(keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)]),
                                            mode="int4", artifact=modes.Artifact((4, 4)))


def test_int4_runs_in_litert_and_scores_near_float(model, data, tmp_path):
    train, val = data
    settings = modes.ExportSettings(num_calibration=16)
    float_path, int4_path, int8_path = (str(tmp_path / f"{mode}.tflite") for mode in ("float32", "int4", "int8"))
    kseg.deploy.litert.to_litert(model, float_path, mode="float32", artifact=modes.Artifact(SIZE))
    kseg.deploy.litert.to_litert(model, int8_path, mode="int8", artifact=modes.Artifact(SIZE), calibration=train,
                                 num_calibration=16)
    info = quantizer.to_litert(model, int4_path, mode="int4", artifact=modes.Artifact(SIZE),
                               origin=modes.Origin(class_names=CLASSES), calibration=train, settings=settings)
    assert info["quantizer"]["weights"] == {"int8": 2, "int4": 1}  # the first and last convolutions keep int8
    assert [entry["layer"] for entry in info["quantizer"]["int8_weights"]] == ["features", "classifier"]
    assert info["input"]["dtype"] == "uint8" and info["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert info["output"]["dtype"] == "uint8" and info["metadata"]["labels"] == CLASSES
    assert info["quantizer"]["in_float"] == []
    with open(int4_path, "rb") as f:  # no float weights: only the uint8 ends go through float (fast_uint8_ends)
        dequantized = [op for op in litert_graph.ops(f.read()) if op.name == "DEQUANTIZE"]
    assert len(dequantized) == 2 and all(not op.constants for op in dequantized)
    scores = {name: miou(path, val) for name, path in (("float32", float_path), ("int8", int8_path),
                                                       ("int4", int4_path))}
    assert scores["float32"] > 90, scores  # the model segments: a drop would show
    assert scores["float32"] - scores["int4"] < 3, scores


def test_mixed_promotes_the_ops_int8_breaks_and_meets_the_bound(outlier, data, tmp_path):
    train, val = data
    float_path, mixed_path = str(tmp_path / "float32.tflite"), str(tmp_path / "mixed.tflite")
    kseg.deploy.litert.to_litert(outlier, float_path, mode="float32", artifact=modes.Artifact(SIZE))
    settings = modes.ExportSettings(num_calibration=16, max_drop=0.3)
    info = quantizer.to_litert(outlier, mixed_path, mode="mixed", artifact=modes.Artifact(SIZE), calibration=train,
                               settings=settings)
    search = info["quantizer"]["selection"]
    assert search["float32_miou"] - search["int8_miou"] > 0.2, search  # full int8 breaks this model
    assert search["met"] and search["drop"] <= 0.3 and search["images"] == 16
    images, masks = quantizer.calibration_set(train, SIZE, 16)  # the written file, on the images it was chosen on
    runner, confusion = runtime.LiteRTModel(mixed_path), np.zeros((3, 3), np.int64)
    for image, mask in zip(images, masks):
        confusion += kseg.metrics.confusion_matrix(mask, runtime.labels_from_logits(runner.run(image[0])), 3)
    assert kseg.metrics.scores(confusion)["miou"] == pytest.approx(search["miou"], abs=1e-9)
    promoted = {entry["layer"] for entry in info["quantizer"]["promoted"]}
    assert "mixer" in promoted and len(promoted) <= 2, info["quantizer"]["promoted"]
    assert {entry["layer"] for entry in info["quantizer"]["in_float"]} == promoted
    assert miou(float_path, val) - miou(mixed_path, val) < 2  # and it holds on images it was not chosen on
    with open(mixed_path + ".json") as f:
        assert json.load(f)["quantizer"]["promoted"] == info["quantizer"]["promoted"]


def test_mixed_keeps_full_int8_when_int8_meets_the_bound(model, data, tmp_path):
    info = quantizer.to_litert(model, str(tmp_path / "m.tflite"), mode="mixed", artifact=modes.Artifact(SIZE),
                               calibration=data[0], settings=modes.ExportSettings(num_calibration=8, max_drop=5.0))
    assert info["quantizer"]["promoted"] == [] and info["quantizer"]["selection"]["trials"] == 1
    assert info["quantizer"]["weights"] == {"int8": 3} and info["quantizer"]["in_float"] == []


def test_denylisted_ops_and_layers_stay_float_in_the_file(model, data, tmp_path):
    path = str(tmp_path / "deny.tflite")
    settings = modes.ExportSettings(num_calibration=8, float_ops=("ADD",), float_layers=("classifier",))
    info = quantizer.to_litert(model, path, mode="int4", artifact=modes.Artifact(SIZE), calibration=data[0],
                               settings=settings)
    with open(path, "rb") as f:
        in_float = litert_graph.float_ops_of(f.read())  # read from the file: ops whose outputs are float32
    assert sorted(op.name for op in in_float) == ["ADD", "CONV_2D"]
    assert [op.describe(model)["layer"] for op in in_float if op.name == "CONV_2D"] == ["classifier"]
    assert info["quantizer"]["in_float"] == [op.describe(model) for op in in_float]
    assert info["quantizer"]["weights"] == {"int8": 1, "int4": 1, "float32": 1}  # the classifier's stays float32
    runner = runtime.LiteRTModel(path)
    image = next(data[1].examples.as_numpy_iterator())[0].astype("float32")
    want = keras.ops.convert_to_numpy(model(image[None]))[0]
    assert np.corrcoef(runner.logits(image).ravel(), want.ravel())[0, 1] > 0.98
    with pytest.raises(kseg.KsegError, match="matches no op"):
        quantizer.to_litert(model, path, mode="int4", artifact=modes.Artifact(SIZE), calibration=data[0],
                            settings=modes.ExportSettings(num_calibration=4, float_layers=("no_such_layer",)))
    with pytest.raises(kseg.KsegError, match="the graph has no RESIZE_BILINEAR op"):
        quantizer.to_litert(model, path, mode="int4", artifact=modes.Artifact(SIZE), calibration=data[0],
                            settings=modes.ExportSettings(num_calibration=4, float_ops=("RESIZE_BILINEAR",)))


@pytest.fixture(scope="module")
def folder(data, tmp_path_factory):
    """The training blobs as a PNG folder (images/ and index masks/), as `kseg export` reads data."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    for i, (image, mask) in enumerate(data[0].examples.as_numpy_iterator()):
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(outlier, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "outlier.keras"
    outlier.save(path)
    return str(path)


def test_cli_exports_int4_and_mixed(checkpoint, folder, tmp_path, capsys):
    from kseg.cli import main

    out = tmp_path / "artifacts"
    assert main(["export", checkpoint, "--out", str(out), "--modes", "int4", "mixed", "--max-drop", "0.3",
                 "--calibration-data", str(folder), "--input-size", "48x56", "--num-calibration", "8"]) == 0
    printed = capsys.readouterr().out
    assert "outlier_int4.tflite" in printed and "ops in float (drop" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {entry["mode"]: entry for entry in manifest["artifacts"]}
    assert list(entries) == ["int4", "mixed"]
    assert entries["int4"]["quantizer"]["weights"] == {"int8": 2, "int4": 1}
    assert entries["mixed"]["quantizer"]["selection"]["met"] and entries["mixed"]["quantizer"]["promoted"]
    sidecar = json.loads((out / "outlier_mixed.tflite.json").read_text())
    assert sidecar["quantizer"]["max_drop"] == 0.3 and sidecar["quantizer"]["recipe"]
    assert sidecar["calibration"]["images"] == 8
    for name in ("int4", "mixed"):  # both run in LiteRT
        labels = runtime.ArtifactPredictor(str(out / f"outlier_{name}.tflite")).labels(
            [np.zeros((*SIZE, 3), np.float32)])
        assert labels.shape == (1, *SIZE)


def test_cli_denylist_needs_an_ai_edge_quantizer_mode(checkpoint, folder, tmp_path, capsys):
    from kseg.cli import main

    assert main(["export", checkpoint, "--out", str(tmp_path), "--modes", "int8", "--float-ops", "ADD",
                 "--calibration-data", str(folder), "--input-size", "48x56"]) == 2
    error = capsys.readouterr().err
    assert "--float-ops and --float-layers apply to the ai-edge-quantizer modes (int4, mixed, qat_int4)" in error


def test_quantize_study_draws_the_pareto_fronts(checkpoint, folder, tmp_path):
    from kseg.cli import main

    out = tmp_path / "study"
    assert main(["quantize-study", checkpoint, "--data", str(folder), "--out", str(out), "--input-size", "48x56",
                 "--modes", "float32", "int8", "int4", "mixed", "--threads", "1", "--runs", "3",
                 "--num-calibration", "8", "--float-layers", "classifier"]) == 0
    result = json.loads((out / "study.json").read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["float32", "int8", "int4", "mixed"]
    for cost in ("latency", "size"):  # a front: sorted by cost, mIoU rising along it, nothing off it beats it
        front = [row for row in result["rows"] if cost in row["pareto"]]
        value = (lambda r: r["latency_ms"]["1"]) if cost == "latency" else (lambda r: r["size_bytes"])
        assert front and all(a["miou"] < b["miou"] for a, b in zip(front, front[1:]))
        for row in result["rows"]:
            assert row in front or any(value(f) <= value(row) and f["miou"] >= row["miou"] for f in front)
    assert rows["int8"]["miou"] < rows["mixed"]["miou"]  # the outlier channel: mixed wins back what int8 loses
    assert rows["mixed"]["quantizer"]["float_layers"] == ["classifier"]
    text = (out / "study.md").read_text()
    assert "Pareto front, size against mIoU" in text and "mixed: ops kept in float" in text
    assert os.path.getsize(out / "study.png") > 1000


def test_mixed_can_promote_to_int16_activations(outlier, data, tmp_path):
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    path = str(tmp_path / "int16.tflite")
    settings = modes.ExportSettings(num_calibration=16, max_drop=0.3, promote="int16")
    info = quantizer.to_litert(outlier, path, mode="mixed", artifact=modes.Artifact(SIZE), calibration=data[0],
                               settings=settings)
    assert info["quantizer"]["selection"]["met"] and info["quantizer"]["promoted"], info["quantizer"]["selection"]
    assert info["quantizer"]["in_float"] == []  # integer only
    graph = flatbuffer_utils.read_model(path).subgraphs[0]
    promoted = {entry["tensor"] for entry in info["quantizer"]["promoted"]}
    assert {t.type for t in graph.tensors if t.name.decode() in promoted} == {tfl.TensorType.INT16}


def test_label_map_output(model, data, tmp_path):
    path = str(tmp_path / "labels.tflite")
    info = quantizer.to_litert(model, path, mode="mixed", artifact=modes.Artifact(SIZE, output="labels"),
                               calibration=data[0], settings=modes.ExportSettings(num_calibration=8))
    assert info["output"]["kind"] == "labels" and info["output"]["dtype"] == "uint8"
    assert info["output"]["shape"] == [1, *SIZE] and "ARG_MAX" in info["ops"]
    images = [image.astype("float32") for image, _ in data[1].examples.take(4).as_numpy_iterator()]
    want = runtime.KerasPredictor(model).labels(np.stack(images))
    assert (runtime.ArtifactPredictor(path).labels(images) == want).mean() > 0.98


def test_a_bound_nothing_meets_gives_the_best_tried_and_says_so(model, data, tmp_path):
    settings = modes.ExportSettings(num_calibration=8, max_drop=-50.0)  # 50 points better than float32: impossible
    search = quantizer.to_litert(model, str(tmp_path / "m.tflite"), mode="mixed", artifact=modes.Artifact(SIZE),
                                 calibration=data[0], settings=settings)["quantizer"]["selection"]
    assert not search["met"] and search["miou"] >= search["int8_miou"] and search["trials"] > 1


# ------------------------------------------------------------------------------------------------
# qat_int4: int4 weights learned in a quantization-aware fine-tune (kseg.deploy.compression.qat_int4)


def int4_kernel(flatbuffer, layer):
    """The dequantized int4 kernel of `layer`'s CONV_2D in a LiteRT file, as Keras holds it (H, W, in, out)."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    for op in graph.operators:
        tensor = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
        if tensor is not None and tensor.type == tfl.TensorType.INT4 and layer in tensor.name.decode():
            packed = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.uint8)
            nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1).astype(np.int8)
            values = np.where(nibbles > 7, nibbles - 16, nibbles)[:np.prod(tensor.shape)].reshape(tensor.shape)
            scale = np.asarray(tensor.quantization.scale, np.float32).reshape(-1, 1, 1, 1)
            return np.transpose(values * scale, (1, 2, 3, 0))  # OHWI -> HWIO
    raise AssertionError(f"no int4 kernel of {layer}")


def test_fake_quantize_rounds_each_output_channel_and_passes_gradients_straight_through():
    import tensorflow as tf

    from kseg.deploy.compression.qat_int4 import fake_quantize

    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.normal(size=(3, 3, 4, 5)).astype("float32"))
    upstream = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    with tf.GradientTape() as tape:
        rounded = fake_quantize(kernel, bits=4)
        loss = tf.reduce_sum(rounded * upstream)
    rounded, values = rounded.numpy(), kernel.numpy()
    for channel in range(5):
        steps = rounded[..., channel] / (np.abs(values[..., channel]).max() / 7)
        assert np.allclose(steps, np.round(steps), atol=1e-4) and np.abs(steps).max() <= 7 + 1e-4
        assert np.isclose(np.abs(steps).max(), 7)  # the largest weight of each channel is kept exactly
    assert 0 < np.abs(rounded - values).max() <= np.abs(values).max() / 14 + 1e-6
    assert np.allclose(tape.gradient(loss, kernel).numpy(), upstream)  # as if there were no rounding


def test_rounding_a_kernel_commutes_with_a_per_channel_factor():
    """Why rounding the kernel before its batch norm is folded equals rounding the folded kernel LiteRT holds."""
    from kseg.deploy.compression.qat_int4 import fake_quantize

    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 6, 4)).astype("float32")
    factor = np.array([0.3, -2.0, 17.0, -0.01], np.float32)  # gamma / sqrt(variance + epsilon), any sign
    folded = keras.ops.convert_to_numpy(fake_quantize(kernel * factor))
    assert np.allclose(folded, keras.ops.convert_to_numpy(fake_quantize(kernel)) * factor, rtol=1e-5, atol=1e-6)


def test_int4_file_holds_the_kernels_the_fine_tune_rounded(model, data, tmp_path):
    from kseg.deploy.compression import qat_int4

    names, others = qat_int4.int4_layers(model, SIZE)
    assert names == ["mixer"] and others == []  # features and classifier are int4's int8 ends
    denied = modes.ExportSettings(float_layers=("mixer",))
    assert qat_int4.int4_layers(model, SIZE, denied) == ([], [])
    path = str(tmp_path / "int4.tflite")
    quantizer.to_litert(model, path, mode="int4", artifact=modes.Artifact(SIZE), calibration=data[0],
                        settings=modes.ExportSettings(num_calibration=4))
    with open(path, "rb") as f:
        stored = int4_kernel(f.read(), "mixer")
    kernel = model.get_layer("mixer").kernel
    assert np.allclose(stored, keras.ops.convert_to_numpy(qat_int4.fake_quantize(kernel)), rtol=1e-5, atol=1e-7)


def test_qat_int4_fine_tunes_then_writes_int4(model, data, tmp_path):
    train, val = data
    before = [w.copy() for w in model.get_weights()]
    path = str(tmp_path / "colours_qat_int4.tflite")
    settings = modes.ExportSettings(num_calibration=8, qat_steps=6, batch_size=4)
    result = kseg.deploy.stage.export_artifact(model, path, mode="qat_int4", artifact=modes.Artifact(SIZE),
                                               train=train, val=val, settings=settings)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the user's model untouched
    info = result.info
    assert result.mode == "qat_int4" and info["mode"] == "int4" and info["training"] == "qat"
    tuning = info["fine_tune"]
    assert tuning["steps"] == 6 and tuning["batch_size"] == 4 and tuning["simulated_layers"] == ["mixer"]
    assert tuning["unsimulated_int4_layers"] == []
    assert tuning["learning_rate"] == modes.QAT_LEARNING_RATE["int4"] and tuning["augment"] == "flip"
    assert info["quantizer"]["weights"] == {"int8": 2, "int4": 1}
    with open(path + ".json") as f:
        assert json.load(f)["fine_tune"] == tuning
    assert result.miou > 0.8  # six steps at a small rate keep a model that segments


def test_fine_tunes_augment_as_a_short_run_on_the_data(data):
    import dataclasses

    assert kseg.training.recipe.fine_tune(data[0]) == {"loss": "ce", "augment": "flip"}  # colour: no jitter or scale
    stats = kseg.data.DataStats(sizes={SIZE: 32}, class_pixels=np.array([900, 90, 10]), grey=True)
    grey = dataclasses.replace(data[0], stats=stats)
    assert kseg.training.recipe.fine_tune(grey) == {"loss": "ce+dice", "augment": "turns"}  # microscopy: turns only


def test_near_zero_activations_still_give_a_file_litert_loads(tmp_path):
    """A near-zero range (an untrained model's deep features: 1e-6 seen) under a fused ReLU6: LiteRT refuses a
    scale at which 6.0 overflows int32 ("no_integer_overflow_from_quantization")."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1e-10)(inputs)  # activations of at most 2.6e-8
    x = keras.layers.Conv2D(4, 1, name="first")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu6", name="next")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="classifier")(x))
    images = [np.random.default_rng(i).uniform(0, 255, (1, *SIZE, 3)).astype("float32") for i in range(4)]
    path = str(tmp_path / "tiny_ranges.tflite")
    info = quantizer.to_litert(model, path, mode="int4", artifact=modes.Artifact(SIZE), calibration=images,
                               settings=modes.ExportSettings(num_calibration=4))
    assert info["quantizer"]["weights"] == {"int8": 2, "int4": 1}
    scores = runtime.LiteRTModel(path).run(images[0][0])
    assert scores.shape == (*SIZE, 3)

