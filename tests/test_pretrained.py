"""Model folders (kseg.models.save_pretrained / from_pretrained): round trips, a new class count, Hub handles
from huggingface_hub's cache in offline mode, `kseg push` against a stand-in HfApi, one-line errors, and the
command line (`kseg train --init`, `kseg export FOLDER`)."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

import kseg
from kseg.cli import main
from kseg.errors import KsegError
from kseg.models import hub, pretrained

UNET = {"filters": 4, "depth": 2}
NAMES = ["background", "disc", "square"]


def pixels(size=(40, 48)):
    return np.random.default_rng(0).uniform(0, 255, (2, *size, 3)).astype("float32")


@pytest.fixture(scope="module")
def lraspp_folder(tmp_path_factory):
    keras.utils.set_random_seed(0)
    args = kseg.models.architecture("lraspp").tiny
    model = kseg.models.get("lraspp", len(NAMES), **args)
    folder = str(tmp_path_factory.mktemp("models") / "lraspp-tiny")
    kseg.models.save_pretrained(model, folder, architecture="lraspp", builder_args=args, class_names=NAMES,
                                trained_size=(32, 32), provenance={"data": "synthetic"})
    return model, folder


def test_a_folder_round_trips(lraspp_folder):
    model, folder = lraspp_folder
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.keras", "model.keras.json"]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["architecture"] == "lraspp" and config["num_classes"] == 3 and config["class_names"] == NAMES
    assert config["input"]["range"] == [0, 255] and config["input"]["color"] == "RGB"
    assert config["input"]["trained_size"] == [32, 32] and config["provenance"]["data"] == "synthetic"
    assert config["kseg_version"] == kseg.__version__
    with open(os.path.join(folder, "README.md")) as f:
        card = f.read()
    assert card.startswith("---\nlibrary_name: keras") and "from_pretrained" in card and "disc" in card
    loaded = kseg.models.from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(loaded(pixels())), np.asarray(model(pixels())))
    # what `kseg export` reads: the folder's checkpoint carries its provenance like a run's best.keras
    origin = kseg.provenance.of_checkpoint(os.path.join(folder, "model.keras"))
    assert origin["architecture"] == "lraspp" and origin["class_names"] == NAMES and origin["crop_size"] == [32, 32]


def test_a_new_class_count_keeps_every_other_weight(lraspp_folder):
    model, folder = lraspp_folder
    loaded = pretrained.load(folder, num_classes=5)
    assert loaded.model.output_shape[-1] == 5 and loaded.model(pixels()).shape[-1] == 5
    assert loaded.reinitialised == ["low_classifier", "high_classifier"]
    for old, new in zip(model.layers, loaded.model.layers):
        if new.weights and new.name not in loaded.reinitialised:
            for a, b in zip(old.get_weights(), new.get_weights()):
                np.testing.assert_array_equal(a, b)


def test_a_training_checkpoint_knows_its_architecture(tmp_path):
    model = kseg.models.get("unet", 2, **UNET)
    path = str(tmp_path / "best.keras")
    model.save(path)
    kseg.provenance.write_keras_sidecar(path, "unet", UNET, num_classes=2, class_names=["a", "b"], crop_size=[32, 32])
    folder = kseg.models.save_pretrained(path, str(tmp_path / "unet"))
    config = pretrained.read_config(folder)[1]
    assert (config["architecture"], config["builder_args"], config["class_names"]) == ("unet", UNET, ["a", "b"])
    assert config["provenance"]["checkpoint"] == path
    with pytest.raises(KsegError, match="exists"):
        kseg.models.save_pretrained(path, folder)
    kseg.models.save_pretrained(model, folder, overwrite=True)  # replaced whole: no architecture any more
    assert pretrained.read_config(folder)[1]["architecture"] is None
    with pytest.raises(KsegError, match="needs the architecture"):
        kseg.models.from_pretrained(folder, num_classes=4)
    assert kseg.models.from_pretrained(path, num_classes=4).output_shape[-1] == 4  # the sidecar says it


def hub_cache(root, repo, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    storage = root / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            (snapshot / name).write_bytes(f.read())
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(revision)
    return revision


def test_hub_handles_load_from_the_cache_offline(lraspp_folder, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    model, folder = lraspp_folder
    revision = hub_cache(tmp_path, "kseg-test/lraspp-tiny", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for handle in ("hf://kseg-test/lraspp-tiny", f"hf://kseg-test/lraspp-tiny@{revision}"):
        loaded = kseg.models.from_pretrained(handle)
        np.testing.assert_array_equal(np.asarray(loaded(pixels())), np.asarray(model(pixels())))
    with pytest.raises(KsegError, match=r"^hf://kseg-test/missing: not found in the Hub cache \(HF_HUB_OFFLINE"):
        kseg.models.from_pretrained("hf://kseg-test/missing")
    with pytest.raises(KsegError, match="hf://org/name or hf://org/name@revision"):
        kseg.models.from_pretrained("hf://no-name")


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "absent", "no such folder"),
    (lambda d: d, "no readable config.json (not a kseg model folder)"),
    (lambda d: d / "unknown.keras", "no such file"),
])
def test_unusable_handles_are_one_line_errors(tmp_path, make, problem):
    handle = str(make(tmp_path))
    with pytest.raises(KsegError) as error:
        kseg.models.from_pretrained(handle)
    assert str(error.value) == f"{handle}: {problem}"


def test_unknown_architectures_and_keras_hub_presets_are_named(lraspp_folder, tmp_path):
    _, folder = lraspp_folder
    config = pretrained.read_config(folder)[1]
    (tmp_path / "config.json").write_text(json.dumps({**config, "architecture": "segnext"}))
    with pytest.raises(KsegError, match="unknown architecture 'segnext'"):
        kseg.models.from_pretrained(str(tmp_path))
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps({"module": "keras_hub.src.models.deeplab_v3.deeplab_v3_backbone",
                                                    "class_name": "DeepLabV3Backbone",
                                                    "registered_name": "keras_hub>DeepLabV3Backbone"}))
    with pytest.raises(KsegError, match="a keras-hub DeepLabV3Backbone preset: kseg has no converter"):
        kseg.models.from_pretrained(str(preset))


class FakeHfApi:
    calls = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))

    def create_branch(self, repo_id, branch, **options):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, **options):
        self.calls.append(("upload_folder", options["repo_id"], options))
        return f"https://example.invalid/{options['repo_id']}/commit/1"


def test_push_uploads_the_folder_with_a_token_and_says_when_there_is_none(lraspp_folder, monkeypatch, capsys):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    _, folder = lraspp_folder
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", folder, "hf://kseg-test/lraspp-tiny"]) == 2
    assert "hf://kseg-test/lraspp-tiny: no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert main(["push", folder, "hf://kseg-test/lraspp-tiny@v1"]) == 0
    kinds = [call[0] for call in FakeHfApi.calls]
    assert kinds == ["create_repo", "create_branch", "upload_folder"]
    upload = FakeHfApi.calls[-1][2]
    assert upload["folder_path"] == folder and upload["revision"] == "v1"
    assert "https://example.invalid/kseg-test/lraspp-tiny/commit/1" in capsys.readouterr().out
    with pytest.raises(KsegError, match="not a kseg model folder"):
        hub.push(os.path.dirname(folder), "hf://kseg-test/x")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "synth", str(root), "--num-images", "8", "--size", "32"]) == 0
    return root


@requires_tensorflow
@pytest.mark.slow
def test_train_init_starts_from_a_folder_with_the_datas_class_count(data, tmp_path, capsys):
    keras.utils.set_random_seed(0)
    classes = kseg.data.load(str(data), "train").num_classes
    start = kseg.models.get("unet", classes - 1, **UNET)
    folder = kseg.models.save_pretrained(start, str(tmp_path / "start"), architecture="unet", builder_args=UNET)
    out = tmp_path / "run"
    assert main(["train", "--init", folder, "--data", str(data), "--steps", "2", "--val-every", "1",
                 "--crop-size", "32", "--batch-size", "2", "--verbose", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"kseg: starting from {folder} (new for {classes} classes: classifier)" in printed
    with open(out / "best.keras.json") as f:
        sidecar = json.load(f)
    assert sidecar["architecture"] == "unet" and sidecar["builder_args"] == UNET and sidecar["num_classes"] == classes
    with open(out / "config.json") as f:
        assert json.load(f)["init"] == folder
    assert main(["train", "--init", folder, "--model", "lraspp", "--data", str(data), "--steps", "2",
                 "--out", str(tmp_path / "other")]) == 2
    assert "leave --model and --model-arg out" in capsys.readouterr().err


@requires_tensorflow
@pytest.mark.slow
def test_export_takes_a_model_folder(lraspp_folder, tmp_path, capsys):
    _, folder = lraspp_folder
    assert main(["export", folder, "--out", str(tmp_path), "--modes", "float32"]) == 0  # size: its trained size
    with open(tmp_path / "lraspp-tiny_float32.tflite.json") as f:
        sidecar = json.load(f)
    assert sidecar["provenance"]["architecture"] == "lraspp" and sidecar["class_names"] == NAMES
    runner = kseg.runtime.LiteRTModel(str(tmp_path / "lraspp-tiny_float32.tflite"))
    assert runner.input_size == (32, 32)
