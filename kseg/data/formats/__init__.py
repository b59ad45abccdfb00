"""Annotation formats people have, read as kseg splits: COCO, Cityscapes, ADE20K, PASCAL VOC + SBD, labelme,
CVAT and Label Studio exports. `kseg.data.load(PATH)` detects the layout (`FORMATS`, tried in order), or takes it
named: `kseg.data.load(PATH, format="coco")`, `kseg train --data PATH --format coco`.

    split = kseg.data.load("coco/annotations/instances_val2017.json", "val")
    kseg.data.formats.detect("cityscapes")         # 'cityscapes'
    report = kseg.data.formats.check("cvat_export")  # every problem, as `kseg data check` lists them

Each format is a module with `NAME`, `looks_like(path) -> bool`, `splits(path) -> [split names]` (empty for a
single set, of which kseg holds a fifth out to validate, as for folders) and `read(path, split) -> Listing`
(the (image, annotation) pairs, how to draw a pair's mask, the class names). What happens next is the same
for every source (`kseg.data.pairs`): each image and mask is decoded once and checked (the check cache keeps
what it found), any problem is one line naming the file and the annotation, and the pairs become a `Split`.
"""

import types

from kseg.data.formats import ade20k, cityscapes, coco, cvat, labelme, labelstudio, voc_sbd
from kseg.data.formats.common import Listing
from kseg.data.pairs import DataReport
from kseg.data.source import Split
from kseg.errors import DataError

# name -> format module, in detection order (the most specific layouts first). VOC 2012's own layout is read
# by name only (--format voc-sbd): plain JPEGImages/ + SegmentationClass/ folders stay kseg folders.
FORMATS = {module.NAME: module for module in (cityscapes, ade20k, cvat, voc_sbd, coco, labelstudio, labelme)}
VERSION = 1  # bump when a format draws its masks differently: checks cached before are redone


def names() -> list:
    return list(FORMATS)


def get(name: str):
    """The format module called `name`, or a DataError listing the formats."""
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r}; available: {', '.join(FORMATS)} (or folder)")
    return FORMATS[name]


def detect(path: str) -> str | None:
    """The name of the first format whose layout `path` has, else None (a plain folder, or nothing known)."""
    for name, module in FORMATS.items():
        if module.looks_like(path):
            return name
    return None


def resolve(path: str, format: str | None = None) -> types.ModuleType:
    """The format module named, or detected at `path`; a DataError when neither."""
    name = format or detect(path)
    if name is None:
        raise DataError(f"{path}: not a layout kseg knows (formats: {', '.join(FORMATS)}; or a folder with images/ "
                        f"and masks/)")
    return get(name)


def check(path: str, split: str | None = None, format: str | None = None, num_classes: int | None = None,
          use_cache: bool = True) -> DataReport:
    """Checks an annotated dataset (one split, or all with None): a DataReport listing every problem."""
    from kseg.data.cache import FolderCheckCache
    from kseg.data.pairs import check_pairs

    module = resolve(path, format)
    listing: Listing = module.read(path, split)
    variant = [module.NAME, VERSION, split, listing.class_names]
    cache = FolderCheckCache(listing.root, variant=variant) if use_cache else None
    if not listing.pairs and not listing.problems:
        listing.problems.append(f"{path}: no annotated images ({module.NAME})")
    return check_pairs(listing.root, listing.pairs, listing.read_label, read_image=listing.read_image,
                       num_classes=num_classes or len(listing.class_names), problems=listing.problems, cache=cache,
                       class_names=listing.class_names, format=module.NAME)


def plan(path: str, split: str, format: str | None = None) -> tuple:
    """(format name, the format's split to read or None for all, subset to hold out or None) for kseg's `split`:
    a dataset without a val split gives "train" and "val" from its train split (or its single set)."""
    module = resolve(path, format)
    available = module.splits(path)
    if split in available and ("val" in available or split not in ("train", "val")):
        return module.NAME, split, None
    if split in ("train", "val") and "val" not in available and ("train" in available or not available):
        return module.NAME, "train" if "train" in available else None, split
    if not available:
        return module.NAME, None, None
    raise DataError(f"{path}: no {split!r} split in this {module.NAME} dataset (it holds {', '.join(available)})")


def from_format(path: str, split: str = "train", format: str | None = None, num_classes: int | None = None,
                class_names: list | None = None) -> Split:
    """The `Split` of an annotated dataset after its check (any problem raises a DataError naming the file)."""
    from kseg.data.pairs import to_split

    name, read_split, subset = plan(path, split, format)
    report = check(path, read_split, name, num_classes)
    report.raise_first()
    description = f"{path} ({name}{', ' + read_split if read_split else ''})"
    return to_split(report, subset, class_names, description=description)


__all__ = ["FORMATS", "Listing", "check", "detect", "from_format", "get", "names", "plan", "resolve"]
