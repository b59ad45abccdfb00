"""What a training run is told (`TrainConfig`: each field is a `kseg train` flag, its help and choices stated
here once) and what it returns (`TrainResult`). Plain data without TensorFlow, so the command line builds its
parser from it cheaply.

    config = kseg.training.TrainConfig(data="my_folder", time_budget=120, out_dir="runs/a")
    config.check()  # a KsegError naming the first setting that cannot work, before anything runs

Settings left at None are chosen from the data by `kseg.training.recipe.choose`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING

from kseg.errors import KsegError
from kseg.settings import setting

if TYPE_CHECKING:
    import keras

OPTIMIZERS = ("adam", "adamw", "sgd")
DISTRIBUTIONS = ("mirrored", "multiworker")
PRECISIONS = ("mixed_float16", "mixed_bfloat16")
PRETRAINED = ("auto", "imagenet", "none")
BACKBONE_BN = ("frozen", "train")
# The recipe's defaults that the flags' help states (`kseg.training.recipe` holds the rest).
CROP = 256  # crop side, where an image does not fit whole
PIXELS_PER_BATCH = 4 * 128 * 128  # short runs on CPUs learn most from many small steps
BATCH_RANGE = (4, 16)
LEARNING_RATE = 1e-3
FORMAT_HELP = ("annotation format of --data (and --val-data): coco, cityscapes, ade20k, voc-sbd, labelme, cvat, "
               "labelstudio, or folder for a plain images/ + masks/ folder (default: detected from the layout; "
               "kseg.data.formats.FORMATS is the registry)")
# Augmentation presets: keyword arguments of `kseg.data.pipeline` for training batches.
AUGMENTATIONS = {
    "natural": dict(scale_range=(0.5, 2.0), flip=True, vertical_flip=False, rotate90=False, jitter="color"),
    "flip": dict(scale_range=(1.0, 1.0), flip=True, vertical_flip=False, rotate90=False, jitter=None),
    "turns": dict(scale_range=(1.0, 1.0), flip=True, vertical_flip=True, rotate90=True, jitter=None),
    "topdown": dict(scale_range=(0.75, 1.33), flip=True, vertical_flip=True, rotate90=True, jitter="brightness"),
    "none": dict(scale_range=(1.0, 1.0), flip=False, vertical_flip=False, rotate90=False, jitter=None),
}


@dataclasses.dataclass
class TrainConfig:
    model: str = setting("auto", "architecture name (see: kseg models); auto: chosen from the data")
    model_kwargs: dict | None = setting(None, "builder arguments", flag="--model-arg", kind="key=value",
                                        metavar="KEY=VALUE")
    init: str | None = setting(None, "start from these weights: a model folder (kseg.models.save_pretrained), a "
                                     ".keras checkpoint or hf://org/name[@revision]; the architecture is theirs, the "
                                     "class count the data's", metavar="HANDLE")
    pretrained: str = setting("auto", "imagenet: the backbone starts from the ImageNet weights in Keras's cache "
                                      "($KERAS_HOME/models or ~/.keras/models; never downloaded); none: from "
                                      "scratch; auto: imagenet for colour images when the file is there",
                              choices=PRETRAINED)
    backbone_bn: str | None = setting(None, "batch norm of an ImageNet backbone: frozen (inference mode, ImageNet "
                                            "statistics) or train (default: frozen below batch 16)",
                                      choices=BACKBONE_BN)
    data: str = setting("synthetic", "folder, annotation file, packed shards, 'synthetic' or 'tfds:NAME'")
    data_format: str | None = setting(None, FORMAT_HELP, flag="--format", metavar="FORMAT")
    data_options: dict = setting({}, kind="internal")  # e.g. {"num_images": 64} for synthetic
    val_data: str | None = setting(None, "validation data (default: the val split of --data, or a fifth of it)")
    num_classes: int | None = setting(None, "classes (default: from the data)", kind=int)
    crop_size: tuple | None = setting(None, "training crop, e.g. 256 or 256x320 (default: the whole image when it "
                                            f"fits in {CROP}x{CROP}, else {CROP}x{CROP} crops)", kind="size")
    batch_size: int | None = setting(None, f"images a step (default: about {PIXELS_PER_BATCH} pixels, "
                                           f"{BATCH_RANGE[0]} to {BATCH_RANGE[1]} images)", kind=int)
    steps: int | None = setting(None, "total training steps", kind=int)
    epochs: float | None = setting(None, "passes over the training data", kind=float)
    time_budget: float | None = setting(None, "train for this long (wall clock from the command's start, loading "
                                              "and the final saves included), then stop with the best checkpoint",
                                        kind=float, metavar="SECONDS")
    steps_per_epoch: int | None = setting(None, "with --epochs: an epoch is this many steps", kind=int)
    val_every: int | None = setting(None, "validate and save every N steps (default: about 10 times a run, each "
                                          "at most 5% of its round)", kind=int, metavar="STEPS")
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    learning_rate: float | None = setting(None, f"initial learning rate, poly decay to 0 (default {LEARNING_RATE:g})",
                                          flag="--lr", kind=float)
    weight_decay: float = setting(0.0, "weight decay (adamw: default 1e-4, sgd: none)")
    poly_power: float = setting(0.9, "power of the learning rate's poly decay")
    loss: str | None = setting(None, "e.g. ce, dice, lovasz, ce+0.5*dice (default: from the class balance)")
    oversample: float | None = setting(None, "share of training crops centred on a pixel of a rare class (default: "
                                             "1/3 where a class is under 2% of the labelled pixels, else 0)",
                                       kind=float, metavar="SHARE")
    oversample_classes: list | None = setting(None, kind="internal")  # the classes --oversample centres crops on
    augment: str | None = setting(None, "natural photos (scale, colour), topdown images (microscopy, aerial: "
                                        "flips, turns), flips, turns or none (default: from the images and the "
                                        "run's length)", choices=tuple(AUGMENTATIONS))
    seed: int = setting(0, "random seed of weights, shuffling and augmentation")
    mixed_precision: str | None = setting(None, "mixed_float16 (GPU) or mixed_bfloat16 (recent CPUs, TPU)",
                                          choices=PRECISIONS)
    distribute: str | None = setting(None, "mirrored: every local GPU (or the CPU); multiworker: several "
                                           "machines, each with its TF_CONFIG (batch size per worker; the chief "
                                           "writes --out)", choices=DISTRIBUTIONS)
    max_latency: float | None = setting(None, "choose the architecture and width: the best expected accuracy whose "
                                              "int8 LiteRT latency, measured on this machine before training, is "
                                              "within this budget (kseg.training.latency)", kind=float, metavar="MS")
    latency_size: tuple | None = setting(None, "with --max-latency: the input size latency is measured at "
                                               "(default 512x512)", kind="size")
    latency_threads: int | None = setting(None, "with --max-latency: the threads latency is measured with "
                                                "(default 2)", kind=int)
    latency_table: list | None = setting(None, kind="internal")  # the candidates --max-latency measured
    out_dir: str = setting("runs/kseg", "run folder: best.keras, last.keras, log.csv, config.json", flag="--out")
    overwrite: bool = setting(False, "replace a finished run in --out")
    verbose: int = setting(1, "1: a progress bar, 2: one line a round, 0: settings and summary only",
                           choices=(0, 1, 2))

    @classmethod
    def from_json(cls, path: str, **overrides) -> TrainConfig:
        """The config a run stored in its `config.json` (to repeat it), with `overrides` applied."""
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as error:
            raise KsegError(f"{path}: cannot read a training config ({error})") from None
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if k in ("crop_size", "latency_size") and v else v) for k, v in stored.items()
                  if k in fields}
        return cls(**{**values, **overrides})

    def check(self) -> TrainConfig:
        """Itself, once every setting it states can work; else a KsegError naming the first that cannot."""
        for name in ("batch_size", "steps", "steps_per_epoch", "val_every", "num_classes", "latency_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise KsegError(f"{name} must be a positive whole number, got {value!r}")
        for name in ("epochs", "time_budget", "learning_rate", "max_latency"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise KsegError(f"{name} must be a positive number, got {value!r}")
        if self.crop_size is not None:
            crop = tuple(self.crop_size)
            if len(crop) != 2 or not all(isinstance(s, int) and s > 0 for s in crop):
                raise KsegError(f"crop_size must be two positive whole numbers (height, width), got {self.crop_size!r}")
        share = self.oversample
        if share is not None and not (isinstance(share, (int, float)) and 0 <= share <= 1):
            raise KsegError(f"oversample must be a share in [0, 1], got {self.oversample!r}")
        if self.max_latency is not None and self.latency_table is None:
            raise KsegError("max_latency is chosen before training: kseg train --max-latency, or "
                            "kseg.deploy.stage.choose_by_latency(config) first")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            raise KsegError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not (isinstance(self.poly_power, (int, float)) and self.poly_power >= 0):
            raise KsegError(f"poly_power must be 0 or more, got {self.poly_power!r}")
        if self.data_format is not None:
            from kseg.data import formats

            if self.data_format not in (*formats.names(), "folder"):
                raise KsegError(f"unknown data_format {self.data_format!r}; available: "
                                f"{', '.join(formats.names())}, folder")
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("distribute", self.distribute, (None, *DISTRIBUTIONS)),
                                     ("mixed_precision", self.mixed_precision, (None, *PRECISIONS)),
                                     ("augment", self.augment, (None, *AUGMENTATIONS)),
                                     ("pretrained", self.pretrained, PRETRAINED),
                                     ("backbone_bn", self.backbone_bn, (None, *BACKBONE_BN))):
            if value not in allowed:
                raise KsegError(f"unknown {name} {value!r}; available: {', '.join(a for a in allowed if a)}")
        return self


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: dict
    best_path: str
    last_path: str
    initial_epoch: int
    summary: dict = dataclasses.field(default_factory=dict)
    worker_weights: str | None = None  # multi-worker, on the other workers: their final weights (a temporary file)
