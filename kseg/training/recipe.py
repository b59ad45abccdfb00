"""What `kseg train` chooses when the user leaves a setting out: the choices a careful practitioner makes
after one look at the data, each with the reason, so a run says what it did and can be repeated.

    choices = kseg.training.recipe.choose(config, train_split)
    for field, choice in choices.items(): print(field, choice.value, choice.reason)

Only settings left at None (or "auto" for the model) are chosen; a value the user gave is kept
(`model_kwargs={}` asks for the architecture's own width).
The rules, and why:
- model: from scratch (no download is assumed), a U-Net segments small and medium data best for its cost;
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
- augmentation: for grey images (microscopy, X-ray: no up, a fixed scale) "topdown" (flips, 90-degree
  turns, mild scale, brightness) in long runs and "turns" (flips and turns only) in short ones (up to
  `SHORT_RUN` steps or seconds); for colour images "natural" (scale 0.5-2, horizontal flip, colour jitter)
  in long runs and "flip" in short ones: a short run underfits, and augmentation only slows it down.
"""

import dataclasses
import math

import numpy as np

from kseg.models import registry
from kseg.training.config import BATCH_RANGE, CROP, LEARNING_RATE, PIXELS_PER_BATCH

SMALL_DATA = 500
CROP_LARGE_DATA = 512  # from LARGE_DATA training images with large pictures
LARGE_DATA = 2000
EPOCHS = 30
STEP_RANGE = (1000, 40000)
RARE_CLASS = 0.10
DEFAULT_MODEL = "unet"
SHORT_RUN = {"steps": 5000, "seconds": 1200}


@dataclasses.dataclass(frozen=True)
class Choice:
    value: object
    reason: str


def choose(config, split):
    """{field: Choice} for every TrainConfig field left unset, from what `split` tells about the data."""
    choices = {}
    count = len(split) if split.length is not None else None
    size = _typical_size(split)

    if config.model in (None, "auto"):
        choices["model"] = Choice(DEFAULT_MODEL, "from scratch, a U-Net is the strongest model for its cost")
    model = choices["model"].value if "model" in choices else config.model
    if config.model_kwargs is None and count is not None and count < SMALL_DATA:
        small = registry.architecture(model).small
        if small:
            choices["model_kwargs"] = Choice(small, f"{count} training images (< {SMALL_DATA}): a narrower model")

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

    if config.learning_rate is None:
        choices["learning_rate"] = Choice(LEARNING_RATE, f"{config.optimizer}, poly decay to 0 over the run")

    if config.loss is None:
        choices["loss"] = _loss(split)

    if config.augment is None:
        steps = choices["steps"].value if "steps" in choices else config.steps
        if config.epochs is not None and count:
            steps = config.epochs * count / batch
        short = (steps is not None and steps <= SHORT_RUN["steps"]) or (
            config.time_budget is not None and config.time_budget <= SHORT_RUN["seconds"])
        choices["augment"] = _augment(split, short)
    return choices


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
    pixels = None if split.stats is None else np.asarray(split.stats.class_pixels, np.float64)
    if split.num_classes <= 2:
        return Choice("ce+dice", "two classes: cross-entropy plus foreground-sensitive Dice")
    if pixels is None or pixels.sum() == 0:
        return Choice("ce", "class balance unknown")
    shares = pixels / pixels.sum()
    rarest = int(np.argmin(np.where(shares > 0, shares, np.inf)))
    if shares[rarest] < RARE_CLASS:
        name = split.class_names[rarest] if rarest < len(split.class_names) else str(rarest)
        return Choice("ce+dice", f"class {name!r} is {100 * shares[rarest]:.1f}% of the pixels: Dice keeps it weighed")
    return Choice("ce", f"every class is at least {100 * RARE_CLASS:.0f}% of the pixels")
