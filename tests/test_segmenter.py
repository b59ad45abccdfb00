"""kseg.Segmenter: every artifact type as `kseg predict` runs it, pictures of every kind at their size, tiles
(blending, bounded memory), test-time augmentation, the command-line flags and videos."""

import json
import os
import tracemalloc

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image

import kseg
from kseg import provenance, runtime
from kseg.cli import main
from kseg.deploy import litert, modes
from kseg.errors import ArgumentError
from kseg.runtime import tiling, tta

pytestmark = requires_tensorflow
CROP = (32, 32)
CLASSES = 6  # the synthetic data's


def picture(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """{".keras": path, ".tflite": path, ".onnx": path (when onnxruntime is there)}: one tiny U-Net (6 classes,
    trained crop 32 in its sidecar), exported at 32x32."""
    root = tmp_path_factory.mktemp("segmenter")
    keras.utils.set_random_seed(0)
    model = kseg.models.unet(CLASSES, filters=4, depth=2)
    paths = {".keras": str(root / "best.keras")}
    model.save(paths[".keras"])
    provenance.write_keras_sidecar(paths[".keras"], "unet", {"filters": 4, "depth": 2}, crop_size=list(CROP))
    paths[".tflite"] = str(root / "best_float32.tflite")
    litert.to_litert(model, paths[".tflite"], mode="float32", artifact=modes.Artifact(CROP))
    try:
        import onnxruntime  # noqa: F401

        from kseg.deploy import onnx_export
    except ImportError:
        return paths
    paths[".onnx"] = str(root / "best.onnx")
    onnx_export.to_onnx(model, paths[".onnx"], artifact=modes.Artifact(CROP))
    return paths


def conv_model(kernel=3, classes=3):
    """A fully convolutional model without strides: translation-equivariant but for its zero padding."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    if kernel > 1:
        x = keras.layers.Conv2D(8, kernel, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(classes, kernel, padding="same")(x))


@pytest.mark.parametrize("kind", [".keras", ".tflite", ".onnx"])
def test_segmenter_gives_the_labels_kseg_predict_writes(artifacts, kind, tmp_path):
    if kind not in artifacts:
        pytest.skip("onnxruntime is not installed")
    path = tmp_path / "photo.png"
    Image.fromarray(picture(45, 61)).save(path)
    assert main(["predict", artifacts[kind], str(path), "--out", str(tmp_path / "out")]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    labels = kseg.Segmenter(artifacts[kind]).predict(str(path))
    assert labels.dtype == np.uint8 and labels.shape == (45, 61)
    assert np.array_equal(labels, written)
    old = runtime.predictor(artifacts[kind]).labels(picture(45, 61)[None].astype(np.float32))[0]
    assert np.array_equal(labels, old)  # the predictor the Segmenter builds on still answers alike


def test_a_model_folder_and_a_keras_model_segment_as_their_checkpoint(artifacts, tmp_path):
    folder = kseg.models.save_pretrained(artifacts[".keras"], str(tmp_path / "folder"))
    image = picture(40, 36)
    want = kseg.Segmenter(artifacts[".keras"]).predict(image)
    assert np.array_equal(kseg.Segmenter(folder).predict(image), want)
    assert kseg.Segmenter(folder).predictor.trained_size == CROP
    assert np.array_equal(kseg.runtime.Segmenter(runtime.load_keras(artifacts[".keras"])).predict(image), want)


def test_label_maps_are_at_the_pictures_size_for_every_kind_of_picture(artifacts, tmp_path):
    segmenter = kseg.Segmenter(artifacts[".keras"])
    rgb = picture(30, 44)
    grey = tmp_path / "grey.png"
    Image.fromarray(rgb[..., 0]).save(grey)
    assert segmenter.predict(str(grey)).shape == (30, 44)
    rgba = np.concatenate([rgb, np.full((30, 44, 1), 7, np.uint8)], axis=-1)
    assert np.array_equal(segmenter.predict(rgba), segmenter.predict(rgb))  # alpha dropped
    wide = rgb[..., 0].astype(np.uint16) * 257  # 16-bit: the top 8 bits, as training's decoder reads them
    assert np.array_equal(segmenter.predict(wide), segmenter.predict(rgb[..., 0]))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(wide).save(sixteen)
    assert np.array_equal(segmenter.predict(str(sixteen)), segmenter.predict(rgb[..., 0]))
    rotated = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(rotated, exif=exif)
    assert segmenter.predict(str(rotated)).shape == (44, 30)
    assert segmenter.predict(Image.open(rotated)).shape == (44, 30)
    with pytest.raises(ArgumentError, match="expected an image"):
        segmenter.predict(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("kind", [".keras", ".tflite"])
def test_one_window_the_size_of_the_picture_is_whole_picture_inference(artifacts, kind):
    image = picture(48, 40, seed=3)
    whole = kseg.Segmenter(artifacts[kind]).predict(image)
    assert np.array_equal(kseg.Segmenter(artifacts[kind], tile=(48, 40)).predict(image), whole)


def test_tiles_agree_with_the_whole_picture_on_an_equivariant_model():
    model = conv_model()
    image = picture(96, 128, seed=4)
    whole = kseg.Segmenter(model).predict(image)
    tiled = kseg.Segmenter(model, tile=(40, 40), overlap=0.25)
    assert len(tiled.plan(image.shape[:2]).windows) > 9
    assert (tiled.predict(image) == whole).mean() > 0.95


def test_blending_weights_are_positive_and_peak_at_the_centre():
    w = tiling.weights(33, 20)
    assert w.shape == (33, 20) and w.min() > 0 and w.max() <= 1
    assert np.unravel_index(w.argmax(), w.shape) in {(16, 9), (16, 10)}
    assert w[16, 0] < w[16, 5] < w[16, 9] and w[0, 9] < w[8, 9] < w[16, 9]
    for length, window in ((100, 32), (33, 33), (10, 32), (1000, 257)):
        starts = tiling.positions(length, window, 0.25)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start:start + window] = True
        assert covered.all() and starts[0] == 0 and max(starts) + min(window, length) == length


def test_the_band_accumulator_is_bounded_by_the_windows_not_the_picture():
    plan = tiling.plan((10_000, 10_000), (512, 512), 0.25, tta.parse("flip").views())
    assert plan.rows == 512 and len(plan.windows) == 2 * 26 * 26
    assert plan.accumulator_bytes(channels=21) < 0.06 * 10_000 * 10_000 * 21 * 4  # 5% of a probability map
    assert [w.y for w in plan.windows] == sorted(w.y for w in plan.windows)
    # A real run: a 1x1 convolution (exactly equivariant) on 3000x4000, tiled at 256.
    model = conv_model(kernel=1)
    image = picture(3000, 4000, seed=5)
    segmenter = kseg.Segmenter(model, tile=(256, 256))
    segmenter.predict(image[:300, :300])  # trace the graph outside the measurement
    tracemalloc.start()
    labels = segmenter.predict(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full_map = 3000 * 4000 * 3 * 4  # 144 MB; the label map is 12 MB, the band 16 MB, a batch of windows 6 MB
    assert peak < 0.5 * full_map, f"peak {peak / 1e6:.0f} MB against a {full_map / 1e6:.0f} MB probability map"
    whole = kseg.Segmenter(model).predict(image[:1000, :1000])
    assert (labels[:1000, :1000] == whole).mean() > 0.999


def test_flip_tta_on_a_flipped_picture_gives_the_flipped_labels(artifacts):
    image = picture(40, 52, seed=6)
    for source in (artifacts[".keras"], artifacts[".tflite"]):
        segmenter = kseg.Segmenter(source, tta="flip")
        assert np.array_equal(segmenter.predict(image[:, ::-1])[:, ::-1], segmenter.predict(image))
    labels, probs = kseg.Segmenter(artifacts[".keras"], tta="flip,scales=0.75,1,1.25", tile=(32, 32)).predict(
        image, probabilities=True)
    assert labels.shape == (40, 52) and probs.shape == (40, 52, CLASSES)
    assert np.allclose(probs.sum(-1), 1, atol=1e-4) and np.array_equal(probs.argmax(-1), labels)
    assert tta.parse("flip,scales=1.25,0.75,1") == tta.Augmentation(True, (0.75, 1.0, 1.25))


def test_auto_tiles_pictures_much_larger_than_the_training_crop(artifacts):
    segmenter = kseg.Segmenter(artifacts[".keras"], tile="auto")
    assert segmenter.window_size((40, 40)) is None
    assert segmenter.window_size((40, 100)) == CROP
    assert {(w.height, w.width) for w in segmenter.plan((100, 100)).windows} == {CROP}
    assert segmenter.predict(picture(100, 70)).shape == (100, 70)
    # Scales on a fixed-input file need windows: they get its input size.
    assert kseg.Segmenter(artifacts[".tflite"], tta="scales=1,1.5").window_size((40, 40)) == CROP


@pytest.mark.parametrize("flags, message", [
    (["--tile", "big"], "--tile takes auto, N or HxW"),
    (["--tile", "4"], "at least 8x8"),
    (["--overlap", "1.5"], "--overlap must lie between 0 and 0.9"),
    (["--tta", "spin"], "--tta takes flip"),
    (["--tta", "flip,scales=a"], "scales must be numbers"),
])
def test_bad_flags_are_one_line(artifacts, tmp_path, capsys, flags, message):
    assert main(["predict", artifacts[".keras"], "x.png", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kseg: error: ") and message in err[0]


def test_predict_and_evaluate_take_tiles_and_tta(artifacts, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--num-images", "4", "--size", "48"]) == 0
    capsys.readouterr()
    images = str(data / "val" / "images")
    assert main(["predict", artifacts[".tflite"], images, "--out", str(tmp_path / "out"), "--tile", "auto",
                 "--overlap", "0.3", "--tta", "flip"]) == 0
    assert len([f for f in os.listdir(tmp_path / "out") if f.endswith(".png")]) == 1
    found = list(kseg.Segmenter(artifacts[".keras"]).predict_folder(images, progress=False))
    assert [os.path.basename(path) for path, _ in found] == ["val_00000.png"] and found[0][1].shape == (48, 48)
    scores = {}
    for flags in ([], ["--tile", "24x24", "--tta", "flip,scales=1,1.25"]):
        report = tmp_path / "scores.json"
        assert main(["evaluate", artifacts[".keras"], "--data", str(data), "--json", str(report),
                     "--num-classes", str(CLASSES), *flags]) == 0
        scores[len(flags)] = json.loads(report.read_text())["scores"]["miou"]
    # The default path scores what the predictor alone predicts.
    runner, confusion = runtime.predictor(artifacts[".keras"]), np.zeros((CLASSES, CLASSES), np.int64)
    val = kseg.data.load(str(data), "val", num_classes=CLASSES)
    for images, masks in kseg.data.pipeline(val, 8).as_numpy_iterator():
        confusion += kseg.metrics.confusion_matrix(masks, runner.labels(images), CLASSES)
    assert scores[0] == kseg.metrics.scores(confusion)["miou"] and 0 <= scores[4] <= 1


def test_a_video_is_segmented_frame_by_frame(artifacts, tmp_path, capsys):
    imageio = pytest.importorskip("imageio")
    pytest.importorskip("imageio_ffmpeg")
    clip, out = str(tmp_path / "clip.mp4"), str(tmp_path / "clip_seg.mp4")
    with imageio.get_writer(clip, "ffmpeg", fps=25, codec="libx264", ffmpeg_log_level="error") as writer:
        for i in range(100):
            writer.append_data(np.roll(picture(64, 64, seed=7), i, axis=1))
    assert main(["predict", artifacts[".tflite"], clip, "--out", out]) == 0
    assert "100 frames of 64x64" in capsys.readouterr().out
    with imageio.get_reader(out, "ffmpeg") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == 100 and frames[0].shape == (64, 64, 3)
    assert main(["predict", artifacts[".keras"], clip, "x.png", "--out", out]) == 2  # a video out takes one video
