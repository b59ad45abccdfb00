"""`load`: a data split from a short spec ("synthetic", "tfds:NAME", a folder or an annotation file), whichever
source it names; `check`: what is in a folder or annotated dataset, and every problem."""

import os

from kseg.data import folder, formats, shards, synthetic, tfds
from kseg.data.pairs import DataReport
from kseg.data.source import Split
from kseg.errors import DataError

FOLDER = "folder"  # format= for a plain folder of images and masks, whatever else it looks like


def load(spec: str, split: str = "train", num_classes: int | None = None, format: str | None = None,
         **options) -> Split:
    """A split from a spec: "synthetic", "tfds:NAME", a folder path, a folder of shards (`kseg data pack`), or an
    annotated dataset (a folder or annotation file in one of `kseg.data.formats.FORMATS`: COCO, Cityscapes,
    ADE20K, VOC + SBD, labelme, CVAT, Label Studio), detected or named by `format`.

    A folder may hold `images/` and `masks/` directly, or one such pair per split (`DIR/train`, `DIR/val`).
    A folder (or annotated dataset) without a val split gives "train" and "val" from one set of pairs: a fifth
    of them (chosen by file name) validates, the rest trains; other split names give every pair.

        kseg.data.load("coco/annotations/instances_train2017.json", "train").class_names[:2]  # background, person
    """
    if format not in (None, FOLDER):
        formats.get(format)  # an unknown name fails before anything is read
    if spec == "synthetic":
        if split == "val" and "num_images" in options:  # keep the validation split a quarter of training
            options = {**options, "num_images": max(options["num_images"] // 4, 1)}
        return synthetic.from_synthetic(split, **options)
    if spec.startswith("tfds:"):
        return tfds.from_tfds(spec[len("tfds:"):], split=split, num_classes=num_classes, **options)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such folder (a data spec is a folder, an annotation file, 'synthetic' or "
                        f"'tfds:NAME')")
    if format is None and os.path.isdir(spec) and shards.is_packed(spec):
        return shards.from_shards(spec, split, num_classes=num_classes)
    if format != FOLDER and (format or formats.detect(spec) or not os.path.isdir(spec)):
        return formats.from_format(spec, split, format, num_classes=num_classes, **options)
    split_dir = os.path.join(spec, split)
    if os.path.isdir(split_dir):
        return folder.from_folder(split_dir, num_classes=num_classes, **options)
    subset = split if split in ("train", "val") and not os.path.isdir(os.path.join(spec, "val")) else None
    return folder.from_folder(spec, num_classes=num_classes, subset=subset, **options)


def check(path: str, num_classes: int | None = None, colors: dict | None = None, format: str | None = None,
          **options) -> DataReport:
    """What `kseg data check` reports of a folder (`kseg.data.folder.check`) or an annotated dataset
    (`kseg.data.formats.check`, every split), detected or named by `format`: counts, sizes, the class
    histogram and every problem, one line each. Never raises for bad files."""
    if format != FOLDER and (format or formats.detect(path) or os.path.isfile(path)):
        return formats.check(path, format=format, num_classes=num_classes, **options)
    return folder.check(path, num_classes=num_classes, colors=colors, **options)
