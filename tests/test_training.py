"""Training as a new user runs it: defaults chosen from the data, a length in steps or seconds, validation
at a rate that does not depend on how few images there are, and a usable best checkpoint at the end."""

import json
import os
import time

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image

import kseg
from kseg.training import TrainConfig, recipe, resolve

pytestmark = requires_tensorflow
TINY_UNET = {"filters": 4, "depth": 2}


def write_folder(root, count, size=(48, 64), grey=False, labels=(0, 1), seed=0):
    """A folder of `count` images whose bright discs are class 1 (or 255 when labels=(0, 255))."""
    rng = np.random.default_rng(seed)
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(count):
        cy, cx, r = rng.uniform(8, size[0] - 8), rng.uniform(8, size[1] - 8), rng.uniform(5, 10)
        inside = np.hypot(yy - cy, xx - cx) <= r
        pixels = np.clip(rng.normal(60, 20, size) + 120 * inside, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels) if grey else Image.fromarray(np.stack([pixels] * 3, -1))
        image.save(root / "images" / f"cell_{i:03d}.png")
        mask = np.where(inside, labels[1], labels[0]).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"cell_{i:03d}.png")
    return root


def test_recipe_fits_the_data(tmp_path):
    grey = kseg.data.load(str(write_folder(tmp_path / "grey", 10, grey=True)), "train")
    config, choices = resolve(TrainConfig(), grey)
    assert config.model == "unet" and config.model_kwargs == kseg.models.architecture("unet").small
    assert config.crop_size == (48, 64)  # the whole image (48x64): it fits
    assert config.batch_size == recipe.BATCH_RANGE[1]  # small crops: more of them a step
    assert config.loss == "ce+dice" and config.augment == "turns"  # grey, and a short run
    assert resolve(TrainConfig(steps=20000), grey)[0].augment == "topdown"
    assert config.steps >= recipe.STEP_RANGE[0]  # a tiny folder still trains for a meaningful number of steps
    assert config.learning_rate == recipe.LEARNING_RATE
    assert set(choices) >= {"model", "crop_size", "batch_size", "steps", "loss", "augment"}

    colour = kseg.data.load("synthetic", "train", num_images=8, size=(300, 300))
    config, _ = resolve(TrainConfig(), colour)
    assert config.crop_size == (recipe.CROP, recipe.CROP) and config.batch_size == 4
    assert config.augment == "flip"  # a short run: stronger augmentation would only slow it down
    assert resolve(TrainConfig(steps=20000), colour)[0].augment == "natural"
    assert resolve(TrainConfig(time_budget=3600), colour)[0].augment == "natural"


def test_recipe_keeps_what_the_user_set():
    split = kseg.data.load("synthetic", "train", num_images=8, size=(64, 64))
    given = TrainConfig(model="deeplabv3plus", model_kwargs={"output_stride": 8}, crop_size=(32, 32), batch_size=2,
                        time_budget=60, learning_rate=0.01, loss="focal", augment="none", pretrained="none",
                        oversample=0.0)
    config, choices = resolve(given, split)
    assert choices == {}
    for field in ("model", "model_kwargs", "crop_size", "batch_size", "learning_rate", "loss", "augment"):
        assert getattr(config, field) == getattr(given, field), field
    assert config.steps is None  # a time budget alone sets the length
    assert resolve(TrainConfig(epochs=3, batch_size=4), split)[0].steps == 6  # 3 passes over 8 images


def test_recipe_loss_follows_the_class_balance():
    balanced = kseg.data.Split(None, 3, ["a", "b", "c"], 4, stats=kseg.data.DataStats({}, np.array([40, 30, 30])))
    rare = kseg.data.Split(None, 3, ["a", "b", "c"], 4, stats=kseg.data.DataStats({}, np.array([90, 8, 2])))
    assert recipe.choose(TrainConfig(), balanced)["loss"].value == "ce"
    choice = recipe.choose(TrainConfig(), rare)["loss"]
    assert choice.value == "ce+dice" and "'c' is 2.0%" in choice.reason


@pytest.mark.slow
def test_time_budget_stops_on_time_with_a_usable_checkpoint(tmp_path):
    data = write_folder(tmp_path / "cells", 6, grey=True)
    budget = 20.0
    started = time.monotonic()
    result = kseg.training.train(TrainConfig(model="unet", model_kwargs=TINY_UNET, data=str(data), time_budget=budget,
                                             out_dir=str(tmp_path / "run"), verbose=0))
    seconds = time.monotonic() - started
    assert 0.9 * budget <= seconds <= 1.1 * budget
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "time budget" and summary["steps"] == result.summary["steps"]
    assert summary["steps"] >= 100  # six images, yet hundreds of steps: an epoch is not the unit
    assert summary["rounds"] >= 2 and summary["overhead_share"] < 0.2
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == summary["rounds"]
    model = kseg.runtime.KerasPredictor(result.best_path)
    scores = kseg.runtime.evaluation.evaluate(model.model, kseg.data.load(str(data), "val")).scores
    assert scores["miou"] > 0.5  # bright discs on a dark background: learnt in seconds


@pytest.mark.slow
def test_a_run_can_be_repeated_from_its_config(tmp_path):
    data = write_folder(tmp_path / "cells", 5)
    first = TrainConfig(model="unet", model_kwargs=TINY_UNET, data=str(data), steps=12, val_every=6,
                        out_dir=str(tmp_path / "a"), verbose=0)
    kseg.training.train(first)
    stored = json.loads((tmp_path / "a" / "config.json").read_text())
    assert stored["crop_size"] == [48, 64] and stored["loss"] == "ce+dice" and "loss" in stored["chosen"]
    again = TrainConfig.from_json(str(tmp_path / "a" / "config.json"), out_dir=str(tmp_path / "b"))
    assert again.crop_size == (48, 64) and again.steps == 12 and again.out_dir == str(tmp_path / "b")
    kseg.training.train(again)
    a, b = [(tmp_path / run / "log.csv").read_text().splitlines() for run in ("a", "b")]
    assert [row.split(",")[0] for row in a] == [row.split(",")[0] for row in b]


def test_binary_masks_saved_as_0_and_255(tmp_path):
    root = write_folder(tmp_path / "bw", 4, labels=(0, 255))
    split = kseg.data.load(str(root), "train")
    assert split.num_classes == 2 and split.class_names == ["background", "foreground"]
    masks = [mask for _, mask in split.examples.as_numpy_iterator()]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1}


def test_a_folder_without_val_holds_out_a_fifth(tmp_path):
    root = write_folder(tmp_path / "flat", 10)
    masks = lambda split: [m.tobytes() for _, m in split.examples.as_numpy_iterator()]  # noqa: E731
    train, val = masks(kseg.data.load(str(root), "train")), masks(kseg.data.load(str(root), "val"))
    assert (len(train), len(val)) == (8, 2) and not set(train) & set(val)
    assert masks(kseg.data.load(str(root), "val")) == val  # the same pairs every time
    tiny = write_folder(tmp_path / "one", 1)
    assert len(kseg.data.load(str(tiny), "val")) == 1  # nothing to hold out: validate on what there is


@pytest.mark.parametrize("stray", [".DS_Store", "Thumbs.db", "README.md", "cell_000.npy", "._cell_001.png"])
def test_stray_files_are_skipped_with_a_note(tmp_path, capsys, stray):
    root = write_folder(tmp_path / "stray", 4)
    for folder in ("images", "masks"):
        (root / folder / stray).write_bytes(b"not an image")
    split = kseg.data.from_folder(str(root))
    assert len(split) == 4
    err = capsys.readouterr().err
    assert err.count("kseg: note: skipped") == 1 and stray in err and "1 more" in err
    report = kseg.data.check(str(root))
    assert not report.problems and len(report.skipped) == 2


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_leaves_no_orphan_and_resumes(tmp_path, monkeypatch):
    """The disk fills while the run saves a checkpoint (as a 3 MB tmpfs did): one line, temporary files removed,
    no sidecar without its checkpoint; the same command resumes once there is room."""
    import errno

    import keras

    data = write_folder(tmp_path / "cells", 6)
    config = TrainConfig(model="unet", model_kwargs=TINY_UNET, data=str(data), steps=21, val_every=4,
                         out_dir=str(tmp_path / "run"), verbose=0)
    real_save, saves = keras.Model.save, []

    def save(model, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 4:  # a checkpoint after a few rounds: the partial file is left as a full disk leaves it
            with open(path, "wb") as f:
                f.write(b"PK partial")
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(kseg.KsegError, match="the disk is full") as error:
        kseg.training.train(config)
    assert "\n" not in str(error.value)
    names = os.listdir(tmp_path / "run")
    assert not [name for name in names if ".tmp" in name], names
    assert all(name[: -len(".json")] in names for name in names if name.endswith(".keras.json")), names
    monkeypatch.setattr(keras.Model, "save", real_save)
    result = kseg.training.train(config)  # room again: it resumes
    assert result.initial_epoch >= 1 and os.path.exists(result.best_path) and os.path.exists(result.last_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 21
