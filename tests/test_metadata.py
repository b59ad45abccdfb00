"""TFLite Model Metadata (kseg.deploy.metadata): what is embedded reads back, the file runs as before, and
MediaPipe Tasks' ImageSegmenter (when installed) loads kseg's files and its category mask is kseg's labels."""

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg import runtime
from kseg.deploy import litert, metadata, modes

pytestmark = [requires_tensorflow, pytest.mark.slow]  # converts every mode up front (~25 s)
SIZE = (48, 56)
NAMES = ["background", "disc", "square"]
MODES = ("float32", "float16", "dynamic", "int8")
# Every LiteRT mode's file: qat_int4 writes int4's (a fine-tune of this untrained model would leave one class),
# qat_int8 and the pruned modes TensorFlow's int8 and float32 (test_qat_and_pruned_files_carry_it_too).
MEDIAPIPE_MODES = (*MODES, "int4", "mixed")
# Share of pixels where MediaPipe's category mask must equal kseg's labels. At the model's input size
# nothing is resized and both take the argmax of the same logits, so only a near-tie that another XNNPACK
# build rounds the other way could differ: measured 100.000% in every mode (MediaPipe 1.2.3).
AGREEMENT = 0.999


def mediapipe_or_skip():
    """mediapipe pins absl-py 2.x where tensorflow-model-optimization pins 1.x, so it lives in its own venv
    (.ci/run makes one that sees kseg's packages and sets KSEG_REQUIRE_MEDIAPIPE=1: there a missing or broken
    mediapipe fails these tests instead of skipping them)."""
    if os.environ.get("KSEG_REQUIRE_MEDIAPIPE"):
        import mediapipe

        return mediapipe
    return pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def model():
    """A tiny untrained DeepLabV3+ whose classifier bias is centred on synthetic images, so that every class
    wins on a good share of pixels (untrained, one class wins 98% of them: a mask comparison would say little)."""
    import keras

    keras.utils.set_random_seed(0)
    model = kseg.models.get("deeplabv3plus", len(NAMES), tiny=True)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.use_bias][-1]
    kernel, bias = head.get_weights()
    mean = keras.ops.convert_to_numpy(model(np.stack(images(8, "train")).astype("float32"))).mean(axis=(0, 1, 2))
    head.set_weights([kernel, bias - mean])
    return model


def calibration():
    images = [np.random.default_rng(i).uniform(0, 255, (1, *SIZE, 3)).astype("float32") for i in range(4)]
    images[0][0, 0, 0, :2] = (0, 255)
    return images


def images(count=3, split="val"):
    """Synthetic shapes as uint8 RGB (H, W, 3), at the model's input size."""
    split = kseg.data.from_synthetic(split, num_images=count, size=SIZE)
    return [np.clip(np.round(x), 0, 255).astype(np.uint8) for x, _ in split.examples.as_numpy_iterator()]


def three_class_split(count=8):
    """Synthetic shapes with the classes past NAMES folded into the background: a Split for mixed, which
    scores its candidates on masks."""
    import tensorflow as tf

    pairs = list(kseg.data.from_synthetic("train", num_images=count, size=SIZE).examples.as_numpy_iterator())
    images = np.stack([image for image, _ in pairs]).astype(np.uint8)
    masks = np.stack([np.where(mask < len(NAMES), mask, 0) for _, mask in pairs]).astype(np.uint8)
    return kseg.data.Split(tf.data.Dataset.from_tensor_slices((images, masks)), len(NAMES), NAMES, length=count,
                           image_size=SIZE, in_memory=True)


@pytest.fixture(scope="module")
def plain(model):
    """{mode: .tflite bytes straight from the converter, without metadata}."""
    return {mode: litert.litert_converter(model, mode=mode, artifact=modes.Artifact(SIZE),
                                          calibration=calibration()).convert() for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_metadata_reads_back_and_the_file_runs_as_before(plain, mode, tmp_path):
    bare, described = str(tmp_path / "bare.tflite"), str(tmp_path / "described.tflite")
    kseg.files.write_atomic(bare, plain[mode])
    kseg.files.write_atomic(described, plain[mode])
    assert metadata.read(bare) is None
    found = metadata.write(described, NAMES)
    assert found == metadata.read(described) == {
        "name": "ImageSegmenter", "min_parser_version": "1.5.0", "color_space": "RGB",
        "normalization": {"mean": [0.0], "std": [1.0]}, "input_range": [0.0, 255.0], "labels": NAMES,
        "activation": "SOFTMAX"}
    with zipfile.ZipFile(described) as archive:  # MediaPipe reads stored entries only
        assert [(i.filename, i.compress_type) for i in archive.infolist()] == [("labels.txt", zipfile.ZIP_STORED)]
        assert archive.read("labels.txt") == b"background\ndisc\nsquare\n"
    added = len((tmp_path / "described.tflite").read_bytes()) - len(plain[mode])
    assert 0 < added < 2048, f"metadata added {added} bytes"
    without, with_ = runtime.LiteRTModel(bare), runtime.LiteRTModel(described)
    assert without.input["dtype"] == with_.input["dtype"] and without.ops() == with_.ops()
    for x in images(2):
        np.testing.assert_array_equal(with_.run(x.astype(np.float32)), without.run(x.astype(np.float32)))


def test_weight_buffers_stay_16_byte_aligned_and_rewriting_is_idempotent(plain):
    from ai_edge_litert import schema_py_generated as tfl

    once = metadata.embed(plain["float32"], NAMES)
    assert metadata.embed(once, NAMES) == once  # the old metadata buffer is replaced, the old zip dropped
    model = tfl.Model.GetRootAs(once, 0)
    starts = []
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        at = table.Offset(4)  # Buffer.data
        if at and table.VectorLen(at):
            starts.append(table.Vector(at))
    assert len(starts) > 10 and all(start % 16 == 0 for start in starts)


def test_export_embeds_class_names_and_records_them_in_the_sidecar(model, tmp_path):
    path = str(tmp_path / "m.tflite")
    info = litert.to_litert(model, path, mode="float32", artifact=modes.Artifact(SIZE),
                            origin=modes.Origin(class_names=NAMES))
    assert info["metadata"] == metadata.read(path) and info["metadata"]["labels"] == NAMES
    with open(path + ".json") as f:
        assert json.load(f)["metadata"]["activation"] == "SOFTMAX"
    # No names given: the checkpoint's run knows them (provenance); none known: no labels file.
    origin = {"architecture": "deeplabv3plus", "class_names": ["a", "b", "c"]}
    assert litert.to_litert(model, path, mode='float32', artifact=modes.Artifact(SIZE),
                            origin=modes.Origin(provenance=origin))["metadata"]["labels"] == ["a", "b", "c"]
    assert litert.to_litert(model, path, mode='float32', artifact=modes.Artifact(SIZE))["metadata"]["labels"] is None


def test_qat_and_pruned_files_carry_it_too(model, tmp_path):
    """The tf_keras twins that QAT and pruning fine-tune export through the same path."""
    twin = kseg.deploy.compression.to_tf_keras(model, input_size=SIZE)
    path = str(tmp_path / "pruned.tflite")
    info = kseg.deploy.compression.export_tf_keras(twin, path, mode="float32", artifact=modes.Artifact(SIZE),
                                                   origin=modes.Origin(class_names=NAMES), training="pruned")
    assert metadata.read(path)["labels"] == NAMES and info["gzip_bytes"] == kseg.files.gzip_size(path)


def test_label_map_exports_say_why_they_carry_no_metadata(model, tmp_path):
    path = str(tmp_path / "labels.tflite")
    info = litert.to_litert(model, path, mode="float32", artifact=modes.Artifact(SIZE, output="labels"),
                            origin=modes.Origin(class_names=NAMES))
    assert "label map" in info["metadata"]["skipped"] and metadata.read(path) is None
    with pytest.raises(kseg.KsegError, match="cannot add segmenter metadata: the output is a label map"):
        metadata.write(path, NAMES)


def test_binary_models_get_sigmoid_and_bad_names_are_refused(plain, tmp_path):
    binary = kseg.models.get("unet", 1, tiny=True)
    path = str(tmp_path / "binary.tflite")
    info = litert.to_litert(binary, path, mode='float32', artifact=modes.Artifact(SIZE),
                            origin=modes.Origin(class_names=["background", "cell"]))
    assert info["metadata"]["activation"] == "SIGMOID" and info["metadata"]["labels"] is None  # 2 names, 1 logit
    with pytest.raises(kseg.KsegError, match="need 3 class names"):
        metadata.embed(plain["float32"], ["only", "two"])
    with pytest.raises(kseg.KsegError, match="SOFTMAX needs several channels"):
        metadata.embed((tmp_path / "binary.tflite").read_bytes(), activation="SOFTMAX")


@pytest.mark.parametrize("mode", MEDIAPIPE_MODES)
def test_mediapipe_image_segmenter_mask_is_kseg_labels(model, mode, tmp_path):
    mediapipe = mediapipe_or_skip()
    from mediapipe.tasks.python import BaseOptions, vision

    path = str(tmp_path / f"{mode}.tflite")
    train = three_class_split()
    settings = kseg.deploy.modes.ExportSettings(num_calibration=4)
    kseg.deploy.stage.convert(model, path, mode=mode, artifact=modes.Artifact(SIZE),
                              origin=modes.Origin(class_names=NAMES), train=train, settings=settings)
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=path),
                                           output_category_mask=True, output_confidence_masks=False)
    kseg_runner = runtime.ArtifactPredictor(path)
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        assert segmenter.labels == NAMES
        agree, counts = [], np.zeros(len(NAMES))
        for x in images(4):
            mask = segmenter.segment(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=x))
            got = np.asarray(mask.category_mask.numpy_view()).reshape(SIZE)
            want = kseg_runner.labels([x.astype(np.float32)])[0]
            agree.append((got == want).mean())
            counts += np.bincount(want.ravel(), minlength=len(NAMES))
    assert (counts / counts.sum()).min() > 0.1, f"kseg's labels are nearly one class ({counts}): a weak comparison"
    assert min(agree) >= AGREEMENT, f"MediaPipe's mask agrees with kseg's labels on {100 * min(agree):.2f}%"


def test_mediapipe_refuses_a_float_file_without_metadata(plain, tmp_path):
    mediapipe_or_skip()
    from mediapipe.tasks.python import BaseOptions, vision

    path = str(tmp_path / "bare.tflite")
    kseg.files.write_atomic(path, plain["float32"])
    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=path))
    with pytest.raises((RuntimeError, OSError), match="NormalizationOptions"):  # 1.2.3: FileNotFoundError
        vision.ImageSegmenter.create_from_options(options)


def centred(model):
    """`model` with trained-like batch-norm statistics and its classifier's bias centred on synthetic images, so
    that several classes win (a mask comparison on one class would say little)."""
    import keras

    from kseg.models import statistics

    statistics.set_batch_norm_statistics(model, np.stack(images(4, "train")).astype("float32"))
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.use_bias][-1]
    kernel, bias = head.get_weights()
    centre = keras.ops.convert_to_numpy(model(np.stack(images(8, "train")).astype("float32"))).mean(axis=(0, 1, 2))
    head.set_weights([kernel, bias - centre])
    return model


def assert_mediapipe_agrees(mediapipe, path):
    """MediaPipe's ImageSegmenter's category mask equals kseg's labels on synthetic pictures."""
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=path),
                                           output_category_mask=True, output_confidence_masks=False)
    kseg_runner = runtime.ArtifactPredictor(path)
    seen = set()
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        for x in images(4):
            mask = segmenter.segment(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=x))
            got = np.asarray(mask.category_mask.numpy_view()).reshape(SIZE)
            want = kseg_runner.labels([x.astype(np.float32)])[0]
            seen.update(np.unique(want).tolist())
            assert (got == want).mean() >= AGREEMENT, f"{100 * (got == want).mean():.2f}% of pixels agree"
    assert len(seen) > 1, "one class everywhere: a weak comparison"


@pytest.mark.parametrize("name", kseg.models.names())
def test_mediapipe_agrees_with_every_registered_architecture_in_int8(name, tmp_path):
    """The registry's contract, MediaPipe's part: each architecture (tiny width) as a full-int8 file."""
    mediapipe = mediapipe_or_skip()
    import keras

    keras.utils.set_random_seed(0)
    model = centred(kseg.models.get(name, len(NAMES), tiny=True))
    path = str(tmp_path / f"{name}_int8.tflite")
    kseg.deploy.stage.convert(model, path, mode="int8", artifact=modes.Artifact(SIZE),
                              origin=modes.Origin(class_names=NAMES), train=three_class_split(),
                              settings=kseg.deploy.modes.ExportSettings(num_calibration=4))
    assert_mediapipe_agrees(mediapipe, path)


# The graphs kseg.models.convert writes other libraries' weights into (their padding, epsilons, resizes and heads),
# one per architecture and backbone family and library: their int8 files must reach MediaPipe as the registry's do.
CONVERTED_GRAPHS = {
    "torchvision:lraspp_mobilenet_v3_large": ("lraspp", {"backbone": "mobilenetv3_large", "head_filters": 128,
                                                         "torchvision_compatible": True}),
    "torchvision:deeplabv3_mobilenet_v3_large": ("deeplabv3", {"backbone": "mobilenetv3_large", "output_stride": 16,
                                                               "atrous_rates": [12, 24, 36], "dropout": 0.5,
                                                               "torchvision_compatible": True}),
    "torchvision:fcn_resnet50": ("fcn32s", {"backbone": "resnet50", "fc_filters": 512, "dropout": 0.1,
                                            "torchvision_compatible": True}),
    "smp:unet_resnet34": ("unet", {"backbone": "resnet34", "filters": 16, "upsampling": "nearest",
                                   "smp_compatible": True}),
    "smp:deeplabv3plus_mobilenet_v2": ("deeplabv3plus", {"backbone": "mobilenetv2", "output_stride": 16,
                                                         "atrous_rates": [12, 24, 36], "aspp_filters": 256,
                                                         "decoder_filters": 256, "dropout": 0.5,
                                                         "smp_compatible": True}),
    "keras_hub:segformer": ("segformer", {"variant": "b0", "keras_hub_compatible": True}),
    "keras_hub:deeplabv3plus": ("deeplabv3plus", {"backbone": "resnet50", "output_stride": 32, "low_level_stride": 4,
                                                  "atrous_rates": [6, 12, 18], "aspp_filters": 256,
                                                  "decoder_filters": 256, "low_level_filters": 48, "dropout": 0.0,
                                                  "keras_hub_compatible": True}),
}


@pytest.mark.parametrize("source", sorted(CONVERTED_GRAPHS))
def test_mediapipe_agrees_on_converted_models_in_int8(source, tmp_path):
    mediapipe = mediapipe_or_skip()
    import keras

    from kseg.models import convert

    assert convert.source_of(source) == source
    architecture, args = CONVERTED_GRAPHS[source]
    keras.utils.set_random_seed(0)
    model = centred(kseg.models.get(architecture, len(NAMES), **args))
    path = str(tmp_path / "int8.tflite")
    kseg.deploy.stage.convert(model, path, mode="int8", artifact=modes.Artifact(SIZE),
                              origin=modes.Origin(class_names=NAMES), train=three_class_split(),
                              settings=kseg.deploy.modes.ExportSettings(num_calibration=4))
    assert_mediapipe_agrees(mediapipe, path)
