"""HRNetV2: the paper's parameter counts, four branches at strides 4 to 32 (odd sizes too), the concatenating
head, and conv -> BN everywhere. Runs under TensorFlow and JAX."""

import keras
import numpy as np
import pytest

import kseg
from kseg.models import backbones

# Parameters (millions) of HRNetV2 with its segmentation head for 19 Cityscapes classes, from the papers
# and the official HRNet-Semantic-Segmentation model zoo. PyTorch counts trainable parameters only:
# BatchNormalization's moving statistics are buffers there, so they are left out here too.
PAPER_PARAMS = {"w18_small_v1": 1.5, "w18_small_v2": 3.9, "w18": 9.6, "w32": 29.5, "w48": 65.8}
WIDTHS = {"w18_small_v1": 16, "w18_small_v2": 18, "w18": 18, "w32": 32, "w48": 48}

# Parameter counts do not depend on the backend, and JAX compiles each new weight shape's initializer
# (about 30 s to build W48 on two cores): all but the smallest are counted under TensorFlow only.
TENSORFLOW_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="backend-independent; slow to build under JAX")


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("variant", [
    "w18_small_v1", *(pytest.param(v, marks=TENSORFLOW_ONLY) for v in ("w18_small_v2", "w18", "w32", "w48"))])
def test_parameter_count_matches_the_paper_and_head_concatenates_all_widths(variant):
    model = kseg.models.hrnet(19, variant=variant)
    assert trainable_params(model) / 1e6 == pytest.approx(PAPER_PARAMS[variant], rel=0.03)
    concat = model.get_layer("head_concat")
    assert len(concat.input) == 4
    assert concat.output.shape[-1] == 15 * WIDTHS[variant]  # C + 2C + 4C + 8C


@pytest.mark.parametrize("size, branch_sizes", [
    ((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)]),
    ((61, 83), [(16, 21), (8, 11), (4, 6), (2, 3)]),  # stride-2 "same" convolutions round up
])
def test_branches_have_strides_4_to_32(size, branch_sizes):
    model = kseg.models.get("hrnet", 3, input_shape=(*size, 3), tiny=True)
    for i, (expected, channels) in enumerate(zip(branch_sizes, (8, 16, 32, 64))):
        branch = model.get_layer(f"stage4_module0_fuse_to_{i}_relu").output
        assert tuple(branch.shape[1:]) == (*expected, channels)
    assert tuple(model.get_layer("head_concat").output.shape[1:]) == (*branch_sizes[0], 8 + 16 + 32 + 64)
    assert tuple(model.output.shape[1:]) == (*size, 3)


def test_every_batch_norm_follows_a_convolution_and_names_are_stable():
    model = kseg.models.get("hrnet", 3, tiny=True)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    for layer in norms:
        producer = layer.input._keras_history.operation
        assert isinstance(producer, keras.layers.Conv2D), f"{layer.name} follows {producer.name}"
    for name in ("stem_conv2_conv", "stage1_module0_branch0_block0_shortcut_conv", "transition3_branch3_down0_conv",
                 "stage4_module0_branch3_block1_conv2_bn", "stage4_module0_fuse_3_to_0_upsample",
                 "stage4_module0_fuse_0_to_3_down2_bn", "head_conv", "classifier", "logits"):
        model.get_layer(name)


def test_normalisation_uses_imagenet_statistics():
    model = kseg.models.get("hrnet", 3, tiny=True)
    normalize = model.get_layer("normalize")
    mean = np.array(backbones.TORCH_STYLE["mean"], "float32").reshape(1, 1, 1, 3)
    out = keras.ops.convert_to_numpy(normalize(np.broadcast_to(mean, (1, 2, 2, 3))))
    np.testing.assert_allclose(out, 0, atol=1e-5)


def test_width_and_stem_overrides_and_nearest_upsampling():
    model = kseg.models.get("hrnet", 3, input_shape=(32, 48, 3), tiny=True, upsampling="nearest")
    assert model.get_layer("stem_conv1_conv").filters == 16
    assert [model.get_layer(f"transition{i}_branch{i}_down0_conv").filters for i in (1, 2, 3)] == [16, 32, 64]
    assert model.get_layer("stage4_module0_fuse_1_to_0_upsample").interpolation == "nearest"
    assert model.get_layer("logits").interpolation == "nearest"


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "w64"}, "variant must be one of .* got 'w64'"),
    ({"width": 0}, "width must be a positive integer or None, got 0"),
    ({"stem_filters": 1.5}, "stem_filters must be a positive integer, got 1.5"),
    ({"upsampling": "bicubic"}, "upsampling must be one of .* got 'bicubic'"),
])
def test_bad_arguments_say_what_was_received(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kseg.models.hrnet(3, **kwargs)
