"""What `kseg train` chooses when the user leaves a setting out: the choices a careful practitioner makes
after one look at the data, each with the reason, so a run says what it did and can be repeated.

    choices = kseg.training.recipe.choose(config, train_split)
    for field, choice in choices.items(): print(field, choice.value, choice.reason)

Only settings left at None (or "auto" for the model) are chosen; a value the user gave is kept
(`model_kwargs={}` asks for the architecture's own width).
The rules, and why:
- start: colour photos start from ImageNet weights when Keras's cache holds them for the backbone
  (`kseg.models.backbones.imagenet_file`; nothing is downloaded; `--pretrained none` opts out, `imagenet`
  insists): with no model given, DeepLabV3+ MobileNetV2 (`PRETRAINED_MODEL`), whose file Keras writes for
  `keras.applications.MobileNetV2(include_top=False)`. Grey images train from scratch unless asked: they are
  read as three equal channels, so ImageNet's first convolutions take them as they are. Backbones without a
  `keras.applications` twin train from scratch without a word.
- fine-tuning: an ImageNet backbone under a new decoder at Adam `FINE_TUNE_LEARNING_RATE`
  (segmentation_models.pytorch's examples fine-tune ImageNet encoders with Adam at 1e-4; not measurable here,
  no ImageNet weights offline); a whole trained model (`--init`) at the from-scratch `LEARNING_RATE`, measured
  (benchmarks/transfer.py, 60 s on the target, val mIoU; 1e-4 / 1e-3 / scratch): MNI152 tissue -> enclosed CSF
  77.04 / 82.23 / 78.84, cells3d -> DSB2018 nuclei 93.84 / 93.96 / 93.97. Below `BN_BATCH` crops a step the ImageNet
  backbone's batch norm is frozen (inference mode, ImageNet statistics): DeepLabv3 (arXiv:1706.05587, 4.1)
  trains batch norm at batch 16 and freezes it below, as Keras's transfer-learning guide advises.
- model: from scratch, a U-Net segments small and medium data best for its cost;
  below `SMALL_DATA` training images an architecture's `small` width (registry) generalises better and
  trains more steps in the same time.
- crop: the whole image when it fits in `CROP` pixels a side (a multiple of 16), else `CROP` (larger crops
  on large datasets): all the context there is, no padding.
- batch: about `PIXELS_PER_BATCH` pixels a step (4 crops of 128x128), 4 to 16 crops: updates, not
  images, are what a short run lacks (2 minutes on the synthetic shapes: 34% mIoU at batch 4, 30% at 16).
- length: 30 passes over the data, 1,000 to 40,000 steps, unless epochs, steps or a time budget is given.
- learning rate: Adam at 1e-3, decayed to 0 over the run (poly 0.9).
- loss: cross-entropy, plus Dice when one class is rare (< `RARE_CLASS` of the pixels) or there are two
  classes (foreground Dice is what binary masks are judged by, and Dice does not drown a small foreground).
- crops: where a class is under `RARE_FOREGROUND` of the labelled pixels and crops are smaller than the
  images, `OVERSAMPLE` of them are centred on a pixel of a rare class (nnU-Net: a third of its patches,
  MIC-DKFZ/nnUNet nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py, oversample_foreground_percent).
- augmentation: for grey images (microscopy, X-ray: no up, a fixed scale) "topdown" (flips, 90-degree
  turns, mild scale, brightness) in long runs and "turns" (flips and turns only) in short ones (up to
  `SHORT_RUN` steps or seconds); for colour images "natural" (scale 0.5-2, horizontal flip, colour jitter)
  in long runs and "flip" in short ones: a short run underfits, and augmentation only slows it down.
"""

import dataclasses
import inspect
import math
import os

import numpy as np

from kseg.errors import KsegError
from kseg.models import arguments, backbones, registry
from kseg.training.config import BATCH_RANGE, CROP, LEARNING_RATE, PIXELS_PER_BATCH, TrainConfig

SMALL_DATA = 500
CROP_LARGE_DATA = 512  # from LARGE_DATA training images with large pictures
LARGE_DATA = 2000
EPOCHS = 30
STEP_RANGE = (1000, 40000)
RARE_CLASS = 0.10
DEFAULT_MODEL = "unet"
SHORT_RUN = {"steps": 5000, "seconds": 1200}
PRETRAINED_MODEL = "deeplabv3plus"  # its default backbone, MobileNetV2, is the one most often in Keras's cache
FINE_TUNE_LEARNING_RATE = 1e-4
BN_BATCH = 16
RARE_FOREGROUND = 0.02
OVERSAMPLE = 1 / 3


@dataclasses.dataclass(frozen=True)
class Choice:
    value: object
    reason: str


def choose(config, split):
    """{field: Choice} for every TrainConfig field left unset, from what `split` tells about the data."""
    choices = {}
    count = len(split) if split.length is not None else None
    size = _typical_size(split)

    grey = split.stats is not None and split.stats.grey
    looked_for = None  # (model, kwargs) whose ImageNet file the recipe looked for and did not find
    wants_imagenet = not config.init and (config.pretrained == "imagenet" or (config.pretrained == "auto" and not grey))
    if config.model in (None, "auto"):
        # The narrower width's weights first on small data, then the default width's (what Keras fetches first).
        widths = [_width(PRETRAINED_MODEL, config.model_kwargs, count)] + [{}] * (config.model_kwargs is None)
        cached = next((w for w in widths if _imagenet(PRETRAINED_MODEL, w)), None) if wants_imagenet else None
        model = DEFAULT_MODEL if cached is None else PRETRAINED_MODEL
        looked_for = (PRETRAINED_MODEL, widths[0]) if wants_imagenet and cached is None else None
        choices["model"] = Choice(model, "from scratch, a U-Net is the strongest model for its cost"
                                  if cached is None else "DeepLabV3+ MobileNetV2 fine-tunes ImageNet weights")
        if cached == {} and widths[0]:
            choices["model_kwargs"] = Choice({}, "ImageNet weights are cached for the default width only")
    model = choices["model"].value if "model" in choices else config.model
    if config.model_kwargs is None and "model_kwargs" not in choices and count is not None and count < SMALL_DATA:
        small = _width(model, None, count)
        if small:
            choices["model_kwargs"] = Choice(small, f"{count} training images (< {SMALL_DATA}): a narrower model")
    kwargs = choices["model_kwargs"].value if "model_kwargs" in choices else (config.model_kwargs or {})
    if config.pretrained != "none":
        start = _start(config, *(looked_for or (model, kwargs)), wants_imagenet)
        if config.pretrained == "auto":
            choices["pretrained"] = start
    pretrained = choices["pretrained"].value if "pretrained" in choices else config.pretrained

    if config.crop_size is None:
        limit = CROP_LARGE_DATA if (count or 0) >= LARGE_DATA and size and min(size) >= 2 * CROP_LARGE_DATA else CROP
        if size is None:
            choices["crop_size"] = Choice((limit, limit), "image sizes unknown")
        else:
            crop = tuple(min(limit, side) for side in size)
            crop = tuple(side - side % 16 if side >= 32 else side for side in crop)
            choices["crop_size"] = Choice(crop, f"images are {size[1]}x{size[0]} (width x height)")
    crop = choices["crop_size"].value if "crop_size" in choices else tuple(config.crop_size)

    if config.batch_size is None:
        batch = int(np.clip(round(PIXELS_PER_BATCH / (crop[0] * crop[1])), *BATCH_RANGE))
        choices["batch_size"] = Choice(batch, f"about {PIXELS_PER_BATCH // 1000}k pixels a step at {crop[0]}x{crop[1]}")
    batch = choices["batch_size"].value if "batch_size" in choices else config.batch_size

    if config.steps is None and config.epochs is None and config.time_budget is None:
        passes = EPOCHS * (count or 1000) / batch
        steps = int(np.clip(math.ceil(passes), *STEP_RANGE))
        choices["steps"] = Choice(steps, f"{EPOCHS} passes over {count} images, within {STEP_RANGE[0]}-{STEP_RANGE[1]}")

    if config.learning_rate is None and pretrained == "imagenet" and not config.init:
        choices["learning_rate"] = Choice(FINE_TUNE_LEARNING_RATE, "fine-tuning an ImageNet backbone "
                                          "(segmentation_models.pytorch's examples: Adam 1e-4), poly decay to 0")
    elif config.learning_rate is None and config.init:
        choices["learning_rate"] = Choice(LEARNING_RATE, "a whole trained model: the from-scratch rate, measured "
                                          "above 1e-4 (benchmarks/transfer.py), poly decay to 0")
    elif config.learning_rate is None:
        choices["learning_rate"] = Choice(LEARNING_RATE, f"{config.optimizer}, poly decay to 0 over the run")
    if config.backbone_bn is None and pretrained == "imagenet":
        choices["backbone_bn"] = Choice("frozen", f"batch {batch} < {BN_BATCH}: ImageNet statistics (DeepLabv3, "
                                        "arXiv:1706.05587)") if batch < BN_BATCH else Choice("train", "")

    if config.loss is None:
        choices["loss"] = _loss(split)
    if config.oversample is None or (config.oversample and config.oversample_classes is None):
        share, classes = _oversample(split, crop, size)
        if config.oversample is None:
            choices["oversample"] = share
        if share.value or config.oversample:  # given a share and no classes: the rare ones, else every foreground
            choices["oversample_classes"] = Choice(classes or list(range(1, max(split.num_classes, 2))), share.reason)

    if config.augment is None:
        steps = choices["steps"].value if "steps" in choices else config.steps
        if config.epochs is not None and count:
            steps = config.epochs * count / batch
        short = (steps is not None and steps <= SHORT_RUN["steps"]) or (
            config.time_budget is not None and config.time_budget <= SHORT_RUN["seconds"])
        choices["augment"] = _augment(split, short)
    return choices


def imagenet_weights(config: TrainConfig) -> str | None:
    """The ImageNet weights file a resolved config starts its backbone from (`pretrained="imagenet"`), else None."""
    if config.pretrained != "imagenet" or config.init:
        return None
    return _imagenet(config.model, config.model_kwargs or {})


def backbone_of(model: str, kwargs: dict) -> tuple[str, dict] | None:
    """(backbone name, its options) of architecture `model` built with `kwargs`, if it takes ImageNet weights."""
    parameters = inspect.signature(registry.architecture(model).build).parameters
    if ("backbone_weights" not in parameters or "backbone" not in parameters
            or any(kwargs.get(flag) for flag in arguments.COMPATIBILITY_FLAGS)):
        return None
    name = kwargs.get("backbone", parameters["backbone"].default)
    return (name, dict(kwargs.get("backbone_kwargs") or {})) if name else None


def _width(model, kwargs, count):
    if kwargs is not None or count is None or count >= SMALL_DATA:
        return kwargs or {}
    return registry.architecture(model).small


def _imagenet(model, kwargs):
    """The cached ImageNet file for `model`'s backbone when it is there, else None."""
    backbone = backbone_of(model, kwargs)
    path = backbones.imagenet_file(*backbone[:1], **backbone[1]) if backbone else None
    return path if path and os.path.isfile(path) else None


def _start(config, model, kwargs, wanted):
    """Choice of "imagenet" or "none" for `pretrained`; a KsegError where "imagenet" was asked for and is missing."""
    if config.init:
        if config.pretrained == "imagenet":
            raise KsegError("--init and --pretrained imagenet both give starting weights: choose one")
        return Choice("none", f"starting from {config.init}")
    backbone = backbone_of(model, kwargs)
    if backbone is None:
        if config.pretrained == "imagenet":
            raise KsegError(f"--pretrained imagenet: {model} has no backbone with keras.applications weights")
        return Choice("none", "")  # nothing to start from: silently from scratch
    if not wanted:
        return Choice("none", "grey images: from scratch (--pretrained imagenet reads them as 3 channels)")
    path = _imagenet(model, kwargs)
    if path:
        return Choice("imagenet", f"{backbone[0]} ImageNet weights in {_home(os.path.dirname(path))}")
    expected = backbones.imagenet_file(backbone[0], **backbone[1])
    if config.pretrained == "imagenet":
        raise KsegError(f"--pretrained imagenet: no {os.path.basename(expected) if expected else 'ImageNet file'} "
                        f"for {backbone[0]} {backbone[1] or ''} in {_home(backbones.keras_models_folder())}; "
                        "download it once (keras.applications) or use --pretrained none")
    return Choice("none", f"no ImageNet weights for {backbone[0]} in {_home(backbones.keras_models_folder())}; "
                          "training from scratch")


def _home(path):
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path.startswith(home + os.sep) else path


def _oversample(split, crop, size):
    """(Choice of the share, the rare classes) for crop oversampling."""
    shares = _shares(split)
    rare = [] if shares is None else [int(c) for c in np.flatnonzero((shares > 0) & (shares < RARE_FOREGROUND))]
    if not rare:
        return Choice(0.0, ""), rare
    if size is not None and all(c >= s for c, s in zip(crop, size)):
        return Choice(0.0, "crops hold whole images: nothing to oversample"), rare
    names = ", ".join(f"{_name(split, c)!r} {100 * shares[c]:.2f}%" for c in rare)
    return Choice(OVERSAMPLE, f"rare: {names} of the pixels; nnU-Net centres a third of its patches on one"), rare


def _shares(split):
    pixels = None if split.stats is None else np.asarray(split.stats.class_pixels, np.float64)
    return None if pixels is None or pixels.sum() == 0 else pixels / pixels.sum()


def _name(split, index):
    return split.class_names[index] if index < len(split.class_names) else str(index)


def fine_tune(split):
    """{"loss", "augment"} for a short fine-tune of a trained model (quantization-aware training): the rules
    above for a short run. Stronger augmentation than the model was trained with would make the fine-tune
    chase images it never saw (measured: a U-Net trained on grey MNI152 slices with flips and turns lost 11
    points of mIoU in 300 QAT steps under colour jitter and scale, and gained 1 without)."""
    return {"loss": _loss(split).value, "augment": _augment(split, short=True).value}


def _augment(split, short):
    grey = split.stats is not None and split.stats.grey
    if grey and short:
        return Choice("turns", "grey images, a short run: flips and 90-degree turns only")
    if grey:
        return Choice("topdown", "grey images: flips, 90-degree turns, brightness, mild scale")
    if short:
        return Choice("flip", "a short run: horizontal flips only, stronger augmentation slows it")
    return Choice("natural", "colour images: scale 0.5-2, horizontal flips, colour jitter")


def _typical_size(split):
    """(height, width) of the split's images: the fixed size, or the most common one, or None."""
    if split.image_size is not None:
        return tuple(split.image_size)
    if split.stats is not None and split.stats.sizes:
        return tuple(max(split.stats.sizes.items(), key=lambda item: item[1])[0])
    return None


def _loss(split):
    shares = _shares(split)
    if split.num_classes <= 2:
        return Choice("ce+dice", "two classes: cross-entropy plus foreground-sensitive Dice")
    if shares is None:
        return Choice("ce", "class balance unknown")
    rarest = int(np.argmin(np.where(shares > 0, shares, np.inf)))
    if shares[rarest] < RARE_CLASS:
        return Choice("ce+dice", f"class {_name(split, rarest)!r} is {100 * shares[rarest]:.1f}% of the pixels: "
                                 "Dice keeps it weighed")
    return Choice("ce", f"every class is at least {100 * RARE_CLASS:.0f}% of the pixels")
