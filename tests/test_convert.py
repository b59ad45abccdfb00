"""Converters (kseg.models.convert): PyTorch state dicts read without PyTorch, torchvision's LR-ASPP, DeepLabV3 and
FCN mapped onto kseg's builders with `torchvision_compatible=True`, SMP's Unet and DeepLabV3+ with
`smp_compatible=True`, one-line errors for tensors that are missing, left over or misshapen, and (with
KSEG_TORCH_PYTHON: a Python with torch, torchvision and segmentation-models-pytorch) kseg's output against
torchvision's and SMP's own on the same pixels."""

import json
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

import kseg
from kseg.cli import main
from kseg.errors import KsegError
from kseg.models import convert
from kseg.models.convert import smp, state_dict, torchvision
from kseg.models.convert.torchvision import imagenet

HERE = os.path.dirname(__file__)
# Largest |kseg - torchvision| allowed, as a share of the largest |output|: float32 rounding only (seen: 6e-7
# absolute on LR-ASPP's logits of about 1; at most 6.5e-6 of the largest output, FCN ResNet-50 at 113 x 135; SMP's
# models at most 3.5e-5, Unet MobileNetV2 at 75 x 101, where torch's own float32 logits are 2.5e-5 off its float64
# ones: kseg's are as close to float64 as torch's are).
TOLERANCE = 1e-4


# torchvision model -> (kseg architecture, the builder arguments its converter gives), for 4 classes
CONVERTED = {
    "lraspp_mobilenet_v3_large": ("lraspp", {"backbone": "mobilenetv3_large", "head_filters": 128,
                                             "torchvision_compatible": True}),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", {"backbone": "mobilenetv3_large", "output_stride": 16,
                                                   "atrous_rates": [12, 24, 36], "aspp_filters": 256, "dropout": 0.5,
                                                   "torchvision_compatible": True}),
    **{f"deeplabv3_{resnet}": ("deeplabv3", {"backbone": resnet, "output_stride": 8, "atrous_rates": [12, 24, 36],
                                             "aspp_filters": 256, "dropout": 0.5, "torchvision_compatible": True})
       for resnet in ("resnet50", "resnet101")},
    **{f"fcn_{resnet}": ("fcn32s", {"backbone": resnet, "fc_filters": 512, "dropout": 0.1,
                                    "torchvision_compatible": True})
       for resnet in ("resnet50", "resnet101")},
}
# torchvision ImageNet classifier -> (the kseg architecture its weights go under by default, its builder arguments)
BACKBONES = {
    **{resnet: ("deeplabv3", {"backbone": resnet, "output_stride": 8, "dropout": 0.5, "torchvision_compatible": True})
       for resnet in ("resnet50", "resnet101")},
    **{name: ("deeplabv3", {"backbone": backbone, "output_stride": 16, "dropout": 0.5, "torchvision_compatible": True})
       for name, backbone in (("mobilenet_v3_large", "mobilenetv3_large"), ("mobilenet_v2", "mobilenetv2"))},
}
# what a classifier's state dict has beyond the backbone (the converter skips it)
CLASSIFIER_HEADS = {"resnet50": ("fc",), "resnet101": ("fc",), "mobilenet_v3_large": ("classifier.0", "classifier.3"),
                    "mobilenet_v2": ("features.18.0", "features.18.1", "classifier.1")}
# Sizes of the torchvision comparison (two, odd ones among them): MobileNets at LR-ASPP's, ResNet-50 models small
# but with ASPP's rate 12 inside the stride-8 features (15 x 17), ResNet-101 models smaller still.
TORCH_SIZES = {"lraspp_mobilenet_v3_large": ("224x224", "161x193"),
               "deeplabv3_mobilenet_v3_large": ("224x224", "161x193"),
               "deeplabv3_resnet50": ("64x64", "113x135"), "fcn_resnet50": ("64x64", "113x135"),
               "deeplabv3_resnet101": ("64x64", "49x71"), "fcn_resnet101": ("64x64", "49x71"),
               "resnet50": ("64x64", "113x135"), "resnet101": ("64x64", "49x71"),
               "mobilenet_v3_large": ("224x224", "161x193"), "mobilenet_v2": ("224x224", "161x193")}


def torch_tensors(model, names):
    """The state dict torchvision would have for `model`'s weights (the converter's mapping run backwards; names
    from `torchvision.names_of(model)` for any torchvision-compatible kseg model, `torchvision.backbone_names` for
    its backbone alone)."""
    tensors = {}
    for layer in model.layers:
        if not layer.weights or layer.name not in names:
            continue
        module, values = names[layer.name], layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            for part, value in zip(torchvision.BN_TENSORS, values):
                tensors[f"{module}.{part}"] = value
            tensors[f"{module}.num_batches_tracked"] = np.array(0, "int64")
            continue
        order = (2, 3, 0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (3, 2, 0, 1)
        tensors[f"{module}.weight"] = values[0].transpose(order)
        if len(values) > 1:
            tensors[f"{module}.bias"] = values[1]
    return tensors


def with_random_batch_norm(model):
    """`model` with random batch-norm statistics and affine parameters (a swapped mean and variance shows)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, variance.shape)])
    return model


def torchvision_like(name):
    """The kseg model that torchvision's `name` converts to (4 classes) with random batch-norm statistics, and its
    weights as torchvision names (an ImageNet classifier's: the backbone's, and a classification head)."""
    keras.utils.set_random_seed(0)
    architecture, args = {**CONVERTED, **BACKBONES}[name]
    model = with_random_batch_norm(kseg.models.get(architecture, 4, **args))
    if name in CONVERTED:
        return model, torch_tensors(model, torchvision.names_of(model))
    tensors = torch_tensors(model, torchvision.backbone_names(model, imagenet.CLASSIFIERS[name][2]))
    tensors.update({f"{module}.{part}": np.ones(3, "float32") for module in CLASSIFIER_HEADS[name]
                    for part in ("weight", "bias")})
    return model, tensors


@pytest.fixture(scope="module")
def reference():
    """A torchvision-compatible LR-ASPP with random batch-norm statistics, and its weights as torchvision names."""
    return torchvision_like("lraspp_mobilenet_v3_large")


@pytest.mark.parametrize("name", list(CONVERTED))
def test_the_mapping_covers_every_tensor_and_the_model_comes_back(name):
    model, tensors = torchvision_like(name)
    if "lraspp" not in name:  # torchvision's published weights carry the auxiliary head: skipped
        tensors.update({"aux_classifier.0.weight": np.zeros((8, 1024, 3, 3), "float32"),
                        "aux_classifier.4.bias": np.zeros(4, "float32")})
    converted, args = convert.SOURCES[f"torchvision:{name}"][0](tensors)
    assert (convert.SOURCES[f"torchvision:{name}"][1], args) == CONVERTED[name]
    image = np.random.default_rng(1).uniform(0, 255, (1, 49, 71, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(converted(image)), np.asarray(model(image)))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_imagenet_classifiers_come_back_as_backbones(name):
    model, tensors = torchvision_like(name)
    converted, args = convert.SOURCES[f"torchvision:{name}"][0](tensors, architecture="deeplabv3", num_classes=4)
    assert args == BACKBONES[name][1]
    image = np.random.default_rng(1).uniform(0, 255, (1, 49, 71, 3)).astype("float32")
    ours, theirs = imagenet.backbone_model(converted), imagenet.backbone_model(model)
    np.testing.assert_array_equal(np.asarray(ours(image)), np.asarray(theirs(image)))


def test_imagenet_classifiers_go_where_torchvision_puts_them():
    with pytest.raises(KsegError, match="torchvision:mobilenet_v2's weights go into deeplabv3, not 'lraspp'"):
        convert.convert_model("mobilenet_v2", "unread.pth", architecture="lraspp")
    with pytest.raises(KsegError, match="torchvision:fcn_resnet50 is a whole fcn32s model: .* not 'deeplabv3'"):
        convert.convert_model("fcn_resnet50", "unread.pth", architecture="deeplabv3")
    with pytest.raises(KsegError, match="^r50.pth: missing conv1.weight; missing bn1.weight, bn1.bias"):
        imagenet.backbone_into("resnet50", {}, architecture="fcn32s", source="r50.pth")


def test_resnet_tensors_that_do_not_fit_are_named_on_one_line():
    tensors = torchvision_like("fcn_resnet50")[1]
    with pytest.raises(KsegError) as error:  # ResNet-50's weights are a ResNet-101's first 6 of 23 layer3 blocks
        torchvision.fcn_resnet101(tensors, source="fcn.pth")
    assert str(error.value).startswith("fcn.pth: missing backbone.layer3.6.conv1.weight")
    tensors["backbone.layer2.0.conv2.weight"] = tensors["backbone.layer2.0.conv2.weight"][:, :, :1]
    tensors["extra.weight"] = np.zeros(1, "float32")
    with pytest.raises(KsegError) as error:
        torchvision.fcn_resnet50(tensors, source="fcn.pth")
    assert str(error.value) == ("fcn.pth: backbone.layer2.0.conv2.weight (128, 128, 1, 3) does not fit "
                                "conv3_block1_2_conv (3, 3, 128, 128); unexpected extra.weight")
    with pytest.raises(KsegError, match="fcn.pth: missing classifier.4.weight .not a state dict of deeplabv3_"):
        torchvision.deeplabv3_resnet50({}, source="fcn.pth")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("backbone.4.block.1.0.weight"), "missing backbone.4.block.1.0.weight"),
    (lambda t: t.update({"classifier.extra.weight": np.zeros(3)}), "unexpected classifier.extra.weight"),
    (lambda t: t.update({"classifier.cbr.0.weight": np.zeros((128, 959, 1, 1), "float32")}),
     "classifier.cbr.0.weight (128, 959, 1, 1) does not fit head_cbr_conv (1, 1, 960, 128)"),
])
def test_tensors_that_do_not_fit_are_named_on_one_line(reference, change, message):
    tensors = dict(reference[1])
    change(tensors)
    with pytest.raises(KsegError) as error:
        torchvision.lraspp_mobilenet_v3_large(tensors, source="lraspp.pth")
    assert str(error.value).startswith("lraspp.pth: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_state_dicts_are_read_from_npz_and_safetensors(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype="float32").reshape(2, 3), "a.count": np.array([3], "int64")}
    np.savez(tmp_path / "sd.npz", **arrays)
    header, data, offset = {}, b"", 0
    for name, value in arrays.items():
        raw = value.tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[str(value.dtype)], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode()
    (tmp_path / "sd.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    for name in ("sd.npz", "sd.safetensors"):
        found = state_dict.read(str(tmp_path / name))
        assert sorted(found) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(found[key], value)
    (tmp_path / "old.pth").write_bytes(b"\x80\x02legacy")
    with pytest.raises(KsegError, match="not a torch.save zip file"):
        state_dict.read(str(tmp_path / "old.pth"))
    with pytest.raises(KsegError, match="no converter for 'resnet'"):
        convert.convert_model("resnet", str(tmp_path / "sd.npz"))


def test_the_command_writes_a_model_folder(reference, tmp_path):
    model, tensors = reference
    np.savez(tmp_path / "lraspp.npz", **tensors)
    out = tmp_path / "lraspp"
    assert main(["convert", "torchvision:lraspp_mobilenet_v3_large", "--weights", str(tmp_path / "lraspp.npz"),
                 "--out", str(out), "--class-names", "a", "b", "c", "d"]) == 0
    loaded = kseg.models.pretrained.load(str(out), num_classes=2)
    assert loaded.config["builder_args"]["torchvision_compatible"] is True
    assert loaded.reinitialised == ["low_classifier", "high_classifier"]
    config = kseg.models.pretrained.read_config(str(out))[1]
    assert config["class_names"] == ["a", "b", "c", "d"]
    assert config["provenance"]["converted_from"] == "torchvision:lraspp_mobilenet_v3_large"


def test_the_command_puts_an_imagenet_backbone_under_a_fresh_head(tmp_path):
    model, tensors = torchvision_like("mobilenet_v3_large")
    np.savez(tmp_path / "mobilenet.npz", **tensors)
    out = tmp_path / "lraspp"
    assert main(["convert", "torchvision:mobilenet_v3_large", "--weights", str(tmp_path / "mobilenet.npz"),
                 "--out", str(out), "--model", "lraspp", "--class-names", "a", "b", "c"]) == 0
    config = kseg.models.pretrained.read_config(str(out))[1]
    assert (config["architecture"], config["num_classes"], config["provenance"]["converted"]) == ("lraspp", 3,
                                                                                                  "backbone")
    image = np.random.default_rng(1).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    ours = imagenet.backbone_model(kseg.models.from_pretrained(str(out)))
    np.testing.assert_array_equal(np.asarray(ours(image)), np.asarray(imagenet.backbone_model(model)(image)))


def features_of(name, model):
    """What tests/torch_reference.py gives for torchvision's `name`: a segmentation model's logits, a classifier's
    deepest features (MobileNetV2's at stride 32, where torchvision has it: kseg's own at 32, same weights)."""
    if name in CONVERTED:
        return model
    if name != "mobilenet_v2":
        return imagenet.backbone_model(model)
    pixels = keras.Input((None, None, 3))
    features = keras.Model(pixels, kseg.models.backbones.build("mobilenetv2", pixels, torchvision=True)[32])
    for layer in features.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return features


def assert_matches_reference(model, npz, label):
    """`model`'s outputs on the reference script's two images equal its saved ones within TOLERANCE of the largest
    (the differences go to stderr: `pytest -s` shows them)."""
    with np.load(npz) as expected:
        for i in range(2):
            ours, theirs = np.asarray(model(expected[f"image{i}"])), expected[f"logits{i}"]
            assert ours.shape == theirs.shape
            error, largest = float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())
            print(f"{label} {expected[f'image{i}'].shape[1:3]}: max abs difference {error:.2e}, largest |output| "
                  f"{largest:.2f}, share {error / largest:.1e}", file=sys.stderr)
            assert error <= TOLERANCE * largest


def torch_python():
    """KSEG_TORCH_PYTHON: an interpreter with torch, torchvision and SMP (.ci/run-style venv of its own)."""
    python = os.environ.get("KSEG_TORCH_PYTHON")
    if not python:
        pytest.skip("KSEG_TORCH_PYTHON is not set (a Python with torch, torchvision and segmentation-models-pytorch, "
                    "e.g. python3 -m venv /tmp/kseg-torch && /tmp/kseg-torch/bin/pip install torch==2.14.1 "
                    "torchvision==0.29.1 segmentation-models-pytorch==0.6.0)")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("name", [*CONVERTED, *BACKBONES])
def test_outputs_match_torchvision(name, tmp_path):
    python = torch_python()
    subprocess.run([python, os.path.join(HERE, "torch_reference.py"), name, str(tmp_path), *TORCH_SIZES[name]],
                   check=True, timeout=600)
    folder = convert.convert(name, weights=str(tmp_path / f"{name}.pth"), out_dir=str(tmp_path / "kseg"))
    model = features_of(name, kseg.models.from_pretrained(folder))
    assert_matches_reference(model, tmp_path / f"{name}.npz", name)


# SMP source -> (kseg architecture, the builder arguments its converter gives)
SMP_CONVERTED = {
    **{f"unet_{encoder}": ("unet", {"backbone": backbone, "filters": 16, "upsampling": "nearest",
                                    "smp_compatible": True})
       for encoder, backbone in smp.ENCODERS.items()},
    **{f"deeplabv3plus_{encoder}": ("deeplabv3plus", {"backbone": backbone, "output_stride": 16,
                                                      "atrous_rates": [12, 24, 36], "aspp_filters": 256,
                                                      "decoder_filters": 256, "dropout": 0.5, "smp_compatible": True})
       for encoder, backbone in smp.ENCODERS.items()},
}
# Sizes of the SMP comparison: DeepLabV3+ takes multiples of 16 only (SMP refuses others); SMP's Unet takes any
# size, and an odd one upsamples by no integer factor, where torch's nearest and Keras's differ.
SMP_SIZES = {"unet": ("64x64", "75x101"), "deeplabv3plus": ("64x64", "96x128")}


def smp_like(name):
    """The kseg model that SMP's `name` converts to (4 classes), random batch-norm statistics, its weights as SMP's
    state dict names."""
    keras.utils.set_random_seed(0)
    architecture, args = SMP_CONVERTED[name]
    model = with_random_batch_norm(kseg.models.get(architecture, 4, **args))
    return model, torch_tensors(model, smp.names_of(model))


@pytest.mark.parametrize("name", list(SMP_CONVERTED))
def test_smp_mapping_covers_every_tensor_and_the_model_comes_back(name):
    model, tensors = smp_like(name)
    tensors.update({"classification_head.3.weight": np.zeros((4, 512), "float32"),  # aux_params' head: skipped
                    "classification_head.3.bias": np.zeros(4, "float32")})
    converted, args = convert.SOURCES[f"smp:{name}"][0](tensors)
    assert (convert.SOURCES[f"smp:{name}"][1], args) == SMP_CONVERTED[name]
    image = np.random.default_rng(1).uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(converted(image)), np.asarray(model(image)))


def test_smp_unet_without_batch_norm_comes_back():
    keras.utils.set_random_seed(0)
    args = {"backbone": "mobilenetv2", "filters": 8, "upsampling": "nearest", "norm": "none", "smp_compatible": True}
    model = kseg.models.unet(3, **args)
    converted, converted_args = smp.segmentation("Unet", "mobilenet_v2", torch_tensors(model, smp.names_of(model)))
    assert converted_args == args
    image = np.random.default_rng(1).uniform(0, 255, (1, 33, 47, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(converted(image)), np.asarray(model(image)))


def test_smp_tensors_that_do_not_fit_are_named_on_one_line():
    tensors = smp_like("unet_resnet34")[1]
    with pytest.raises(KsegError, match="^unet.pth: holds SMP's Unet on resnet34, not DeepLabV3Plus on resnet50: "
                                        "convert it as smp:unet_resnet34$"):
        smp.segmentation("DeepLabV3Plus", "resnet50", tensors, source="unet.pth")
    basic = {key: value for key, value in tensors.items() if not key.startswith("encoder.layer3.")
             or int(key.split(".")[2]) < 2}  # ResNet-18's two blocks in layer3
    with pytest.raises(KsegError, match="^unet.pth: holds SMP's Unet on resnet18, not Unet on resnet34$"):
        smp.segmentation("Unet", "resnet34", basic, source="unet.pth")
    changed = dict(tensors, **{"decoder.blocks.2.conv1.0.weight": np.zeros((64, 191, 3, 3), "float32"),
                               "decoder.blocks.0.attention1.attention.cSE.1.weight": np.zeros(1, "float32")})
    del changed["encoder.layer4.2.bn2.running_var"]
    with pytest.raises(KsegError) as error:
        smp.segmentation("Unet", "resnet34", changed, source="unet.pth")
    assert str(error.value) == ("unet.pth: missing encoder.layer4.2.bn2.running_var; decoder.blocks.2.conv1.0.weight "
                                "(64, 191, 3, 3) does not fit decoder_stride4_a_conv (3, 3, 192, 64); "
                                "unexpected decoder.blocks.0.attention1.attention.cSE.1.weight")
    with pytest.raises(KsegError, match="^unet.pth: missing segmentation_head.0.weight .not a state dict of SMP's"):
        smp.segmentation("DeepLabV3Plus", "resnet34", {}, source="unet.pth")
    with pytest.raises(KsegError, match="converts SMP's Unet and DeepLabV3Plus on resnet34, .* not FPN on resnet34"):
        smp.segmentation("FPN", "resnet34", tensors)


def test_smp_compatible_builders_refuse_what_smp_does_not_build():
    with pytest.raises(KsegError, match="smp_compatible is SMP's Unet on one of its encoders: it needs a backbone"):
        kseg.models.unet(2, smp_compatible=True)
    with pytest.raises(KsegError, match="upsampling must be one of .'nearest', 'bilinear'., got 'transpose'"):
        kseg.models.unet(2, backbone="resnet34", upsampling="transpose", smp_compatible=True)
    with pytest.raises(KsegError, match="output_stride 8 or 16 and low_level_stride 4, not 32 and 4"):
        kseg.models.deeplabv3plus(2, backbone="resnet34", output_stride=32, smp_compatible=True)
    with pytest.raises(KsegError, match="smp_compatible takes segmentation_models_pytorch's weights"):
        kseg.models.deeplabv3plus(2, backbone="resnet34", backbone_weights="imagenet", smp_compatible=True)
    with pytest.raises(KsegError, match="backbone 'xception' has no segmentation_models_pytorch variant; these do: "
                                        "mobilenetv2, resnet101, resnet34, resnet50"):
        kseg.models.deeplabv3plus(2, backbone="xception", smp_compatible=True)


def test_torch_resize_computes_torch_source_indices(tmp_path):
    """torch's F.interpolate(size=...) on a ramp: legacy nearest takes floor(i * in / out) (3 -> 5: 0 0 1 1 2;
    Keras's half-pixel nearest takes 0 0 1 2 2), align_corners=True samples i * (in - 1) / (out - 1)."""
    ramp = np.arange(3, dtype="float32").reshape(1, 3, 1, 1)
    x, reference = keras.Input((3, 1, 1)), keras.Input((5, 1, 1))
    model = keras.Model([x, reference], [kseg.models.blocks.torch_resize_like(x, reference, "nearest"),
                                         kseg.models.blocks.torch_resize_like(x, reference, "bilinear", True)])
    model.save(tmp_path / "resize.keras")
    nearest, aligned = keras.saving.load_model(tmp_path / "resize.keras")([ramp, np.zeros((1, 5, 1, 1), "float32")])
    np.testing.assert_array_equal(np.ravel(nearest), [0, 0, 1, 1, 2])
    np.testing.assert_allclose(np.ravel(aligned), [0, 0.5, 1, 1.5, 2])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMP_CONVERTED))
def test_outputs_match_smp(name, tmp_path):
    python = torch_python()
    subprocess.run([python, os.path.join(HERE, "smp_reference.py"), name, str(tmp_path),
                    *SMP_SIZES[name.split("_")[0]]], check=True, timeout=600)
    model = kseg.models.from_pretrained(convert.convert(f"smp:{name}", weights=str(tmp_path / f"{name}.pth"),
                                                       out_dir=str(tmp_path / "kseg")))
    assert_matches_reference(model, tmp_path / f"{name}.npz", f"smp:{name}")
