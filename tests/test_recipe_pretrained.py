"""Starting from ImageNet weights that are already on disk, and rare classes: what the recipe chooses, that the
weights a run starts from are the cached file's, and that the crop sampler centres its share of crops on a
rare class. Nothing here downloads: the tests write the Keras cache file themselves (random weights)."""

import json
import os

import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.training import TrainConfig, recipe, resolve

pytestmark = requires_tensorflow
TINY = kseg.models.architecture("deeplabv3plus").tiny  # MobileNetV2 at alpha 0.35: keras.applications has it


def write_keras_cache(home, alpha):
    """A MobileNetV2 (no top, random weights) saved where Keras caches its ImageNet file, in Keras's .h5 format."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    path = kseg.models.backbones.imagenet_file("mobilenetv2", alpha=alpha)
    assert path.startswith(str(home)) and os.path.basename(path) == (
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3), alpha=alpha)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path, model


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def colour(size=128):
    return kseg.data.load("synthetic", "train", num_images=8, size=(size, size))


def test_imagenet_file_names_follow_keras_applications(keras_home):
    name = kseg.models.backbones.imagenet_file
    assert name("mobilenetv3_large", alpha=0.75).endswith("weights_mobilenet_v3_large_224_0.75_float_no_top_v2.h5")
    assert name("resnet50").endswith("models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert name("vgg16", width=0.5) is None and name("vgg16_bn") is None  # no ImageNet twin for those
    assert os.path.dirname(name("xception")) == str(keras_home / "models")


def test_colour_photos_start_from_cached_imagenet_weights(keras_home):
    write_keras_cache(keras_home, 0.5)  # the width the recipe picks for small data
    config, choices = resolve(TrainConfig(), colour())
    assert (config.model, config.pretrained) == ("deeplabv3plus", "imagenet")
    assert config.model_kwargs == kseg.models.architecture("deeplabv3plus").small
    assert "mobilenetv2 ImageNet weights in" in choices["pretrained"].reason
    assert config.learning_rate == recipe.FINE_TUNE_LEARNING_RATE
    assert config.batch_size == 4 and config.backbone_bn == "frozen"  # 4 crops a step: ImageNet statistics kept
    assert recipe.imagenet_weights(config).endswith("_0.5_224_no_top.h5")
    text = kseg.training.loop.describe(config, choices, 5, colour(), colour())
    assert "* start      ImageNet (mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5)" in text

    none = resolve(TrainConfig(pretrained="none"), colour())[0]
    assert none.model == "unet" and recipe.imagenet_weights(none) is None and none.learning_rate == 1e-3
    grey = kseg.data.Split(None, 2, ["a", "b"], 8, image_size=(128, 128),
                           stats=kseg.data.DataStats({(128, 128): 8}, np.array([50, 50]), grey=True))
    assert resolve(TrainConfig(), grey)[0].model == "unet"  # grey: the from-scratch U-Net, whatever is cached
    config, choices = resolve(TrainConfig(model="deeplabv3plus"), grey)
    assert config.pretrained == "none" and "grey" in choices["pretrained"].reason
    assert resolve(TrainConfig(model="deeplabv3plus", pretrained="imagenet"), grey)[0].pretrained == "imagenet"


def test_without_the_cache_file_one_line_and_from_scratch(keras_home):
    config, choices = resolve(TrainConfig(), colour())
    assert config.model == "unet" and config.pretrained == "none" and config.learning_rate == 1e-3
    assert choices["pretrained"].reason == (f"no ImageNet weights for mobilenetv2 in {keras_home / 'models'}; "
                                            "training from scratch")
    config, choices = resolve(TrainConfig(model="deeplabv3plus", model_kwargs=TINY), colour())
    assert config.pretrained == "none" and "no ImageNet weights for mobilenetv2" in choices["pretrained"].reason
    with pytest.raises(kseg.KsegError, match="--pretrained imagenet: no mobilenet_v2_weights.*0.35_224_no_top.h5"):
        resolve(TrainConfig(model="deeplabv3plus", model_kwargs=TINY, pretrained="imagenet"), colour())
    config, choices = resolve(TrainConfig(model="hrnet"), colour())  # no keras.applications twin: not a word
    assert config.pretrained == "none" and choices["pretrained"].reason == ""


def test_a_run_starts_from_the_cached_file(keras_home, tmp_path, monkeypatch):
    """The model `kseg train` builds holds the file's weights before its first step, its backbone batch norm
    frozen (moving statistics unchanged by training), the decoder's free."""
    _, reference = write_keras_cache(keras_home, 0.35)
    built = []
    real = kseg.training.loop.build_and_compile

    def build_and_compile(config, num_classes):
        model = real(config, num_classes)
        built.append({name: model.get_layer(name).get_weights() for name in ("Conv1", "bn_Conv1")})
        built.append(model)
        return model

    monkeypatch.setattr(kseg.training.loop, "build_and_compile", build_and_compile)
    result = kseg.training.train(TrainConfig(
        model="deeplabv3plus", model_kwargs=TINY, data="synthetic", data_options={"num_images": 8, "size": (64, 64)},
        crop_size=(64, 64), batch_size=4, steps=8, val_every=4, out_dir=str(tmp_path / "run"), verbose=0))
    start, model = built
    np.testing.assert_array_equal(start["Conv1"][0], reference.get_layer("Conv1").get_weights()[0])
    for ours, theirs in zip(start["bn_Conv1"], reference.get_layer("bn_Conv1").get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert not model.get_layer("bn_Conv1").trainable and model.get_layer("decoder_low_level_bn").trainable
    for ours, theirs in zip(result.model.get_layer("bn_Conv1").get_weights(), start["bn_Conv1"]):
        np.testing.assert_array_equal(ours, theirs)  # frozen: ImageNet statistics and scale kept
    assert not np.array_equal(result.model.get_layer("Conv1").get_weights()[0], start["Conv1"][0])  # fine-tuned


def stats_split(pixels, size=(512, 512), names=("background", "vessel")):
    return kseg.data.Split(None, len(pixels), list(names), 10, image_size=size,
                           stats=kseg.data.DataStats({size: 10}, np.array(pixels)))


def test_recipe_oversamples_rare_classes_only():
    config, choices = resolve(TrainConfig(), stats_split([996, 4]))
    assert config.oversample == pytest.approx(1 / 3) and config.oversample_classes == [1]
    assert "'vessel' 0.40%" in choices["oversample"].reason and "nnU-Net" in choices["oversample"].reason
    assert config.loss == "ce+dice"
    config, _ = resolve(TrainConfig(), stats_split([60, 40]))
    assert config.oversample == 0 and not config.oversample_classes and config.loss == "ce+dice"
    config, choices = resolve(TrainConfig(), stats_split([996, 4], size=(64, 64)))  # whole images in each crop
    assert config.oversample == 0 and "whole images" in choices["oversample"].reason
    config, _ = resolve(TrainConfig(oversample=0.5), stats_split([60, 40]))  # asked for: every foreground class
    assert config.oversample == 0.5 and config.oversample_classes == [1]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_crops_hold_a_tiny_blob_in_the_requested_share(share):
    """One 256x256 picture with a 3x3 blob; 64x64 crops. A uniform crop holds the blob with probability
    (64 + 2)^2 / 193^2 = 11.7%; with oversampling, share + (1 - share) x that."""
    import tensorflow as tf

    mask = np.zeros((256, 256), np.uint8)
    mask[200:203, 40:43] = 1
    image = np.zeros((256, 256, 3), np.uint8)
    count = 480
    split = kseg.data.Split(tf.data.Dataset.from_tensors((image, mask)).repeat(count), 2, ["bg", "blob"], count)
    batches = kseg.data.pipeline(split, 16, size=(64, 64), training=True, scale_range=(1.0, 1.0), flip=False,
                                 jitter=None, seed=3, oversample=share, oversample_classes=(1,))
    hits = np.concatenate([(masks == 1).any(axis=(1, 2)) for _, masks in batches.as_numpy_iterator()])
    assert len(hits) == count
    uniform = 66**2 / 193**2
    expected = share + (1 - share) * uniform
    assert abs(hits.mean() - expected) < 0.06, (hits.mean(), expected)  # about 4 standard deviations at 480 crops


def test_a_whole_trained_model_fine_tunes_at_the_from_scratch_rate(keras_home, tmp_path):
    """--init (measured in benchmarks/transfer.py: 1e-4 lost up to 5 mIoU to 1e-3 in 60 s) against an ImageNet
    backbone under a new decoder (1e-4); a rate given is kept."""
    write_keras_cache(keras_home, 0.5)
    tiny = kseg.models.architecture("unet").tiny
    init = kseg.models.save_pretrained(kseg.models.get("unet", 3, **tiny), str(tmp_path / "start"),
                                       architecture="unet", builder_args=tiny)
    config, choices = resolve(TrainConfig(init=init), colour())
    assert config.learning_rate == recipe.LEARNING_RATE and "whole trained model" in choices["learning_rate"].reason
    assert resolve(TrainConfig(), colour())[0].learning_rate == recipe.FINE_TUNE_LEARNING_RATE  # ImageNet
    assert resolve(TrainConfig(init=init, learning_rate=3e-4), colour())[0].learning_rate == 3e-4


@pytest.mark.parametrize("flag", kseg.models.arguments.COMPATIBILITY_FLAGS)
def test_graphs_of_other_libraries_take_no_imagenet_backbone(flag):
    """A model that computes another library's graph gets its weights from kseg.models.convert, never kseg's
    ImageNet files (which its builder would refuse)."""
    assert recipe.backbone_of("deeplabv3plus", {"backbone": "resnet50", flag: True}) is None
    assert recipe.backbone_of("deeplabv3plus", {"backbone": "resnet50"}) == ("resnet50", {})


def test_lraspp_with_a_reduced_tail_starts_from_the_cached_mobilenetv3(keras_home, tmp_path, monkeypatch):
    """LR-ASPP on MobileNetV3-Large with its last stage halved (`reduced_tail`, the paper's RF2) finds the
    ordinary keras.applications file, and `kseg train` starts every layer before that stage from it."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    options = {"alpha": 0.35, "reduced_tail": True}
    path = kseg.models.backbones.imagenet_file("mobilenetv3_large", **options)
    assert os.path.basename(path) == "weights_mobilenet_v3_large_224_0.35_float_no_top_v2.h5"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    reference = keras.applications.MobileNetV3Large(include_top=False, weights=None, input_shape=(224, 224, 3),
                                                    alpha=0.35, include_preprocessing=False)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    built = []
    real = kseg.training.loop.build_and_compile

    def build_and_compile(config, num_classes):
        model = real(config, num_classes)
        built.append({name: model.get_layer(name).get_weights()
                      for name in ("conv", "expanded_conv_11_project", "expanded_conv_13_expand")})
        return model

    monkeypatch.setattr(kseg.training.loop, "build_and_compile", build_and_compile)
    result = kseg.training.train(TrainConfig(
        model="lraspp", model_kwargs={"backbone_kwargs": options, "head_filters": 16}, pretrained="imagenet",
        data="synthetic", data_options={"num_images": 8, "size": (64, 64)}, crop_size=(64, 64), batch_size=4,
        steps=2, val_every=2, out_dir=str(tmp_path / "run"), verbose=0))
    start = built[0]
    for name in ("conv", "expanded_conv_11_project"):  # before the last stage: the file's weights
        np.testing.assert_array_equal(start[name][0], reference.get_layer(name).get_weights()[0])
    halved = start["expanded_conv_13_expand"][0].shape[-1]
    full = reference.get_layer("expanded_conv_13_expand").get_weights()[0].shape[-1]
    assert halved < full  # 192 of 336 at alpha 0.35 (channels rounded to multiples of 8): from scratch
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["pretrained"] == "imagenet"
    assert result.model.get_layer("conv_1").filters < reference.get_layer("conv_1").filters
