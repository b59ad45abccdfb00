"""ADE20K scene parsing (the MIT challenge release, ADEChallengeData2016): 150 classes.

Layout: `ROOT/images/{training,validation}/*.jpg` and `ROOT/annotations/{training,validation}/*.png` (ROOT may
also be the folder holding `ADEChallengeData2016/`). Annotation value 0 ("other objects") becomes 255, ignored;
value v becomes class v - 1. Class names: the first name of each row of `objectInfo150.csv` when the folder has
it, else the official list below (the challenge's objectInfo150 names, as MMSegmentation states them).

    split = kseg.data.load("ADEChallengeData2016", "val")   # kseg train --data ... (--format ade20k)
    split.class_names[:3]                                   # ['wall', 'building', 'sky']
"""

import csv
import glob
import os

import numpy as np

from kseg.data.formats.common import Listing, read_index_png, split_folders
from kseg.errors import DataError

NAME = "ade20k"
SPLITS = {"train": "training", "val": "validation"}
_NAMES = (  # multi-word names joined by "_" here only
    "wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table "
    "mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence "
    "desk rock wardrobe lamp bathtub railing cushion base box column signboard chest_of_drawers counter sand "
    "sink skyscraper fireplace refrigerator grandstand path stairs runway case pool_table pillow screen_door "
    "stairway river bridge bookcase blind coffee_table toilet flower book hill bench countertop stove palm "
    "kitchen_island computer swivel_chair boat bar arcade_machine hovel bus towel light truck tower chandelier "
    "awning streetlight booth television_receiver airplane dirt_track apparel pole land bannister escalator "
    "ottoman bottle buffet poster stage van ship fountain conveyer_belt canopy washer plaything swimming_pool "
    "stool barrel basket waterfall tent bag minibike cradle oven ball food step tank trade_name microwave pot "
    "animal bicycle lake dishwasher screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier "
    "crt_screen plate monitor bulletin_board shower radiator glass clock flag"
)
CLASS_NAMES = [name.replace("_", " ") for name in _NAMES.split()]
TABLE = np.concatenate([[255], np.arange(255)]).astype(np.uint8)  # 0 -> ignore, v -> v - 1


def _root(path):
    inner = os.path.join(path, "ADEChallengeData2016")
    return inner if os.path.isdir(inner) else path


def looks_like(path: str) -> bool:
    """A folder with `images/training|validation` and `annotations/training|validation`."""
    root = _root(path)
    return any(os.path.isdir(os.path.join(root, "images", name)) and
               os.path.isdir(os.path.join(root, "annotations", name)) for name in SPLITS.values())


def splits(path: str) -> list:
    return list(split_folders(os.path.join(_root(path), "annotations"), SPLITS))


def class_names(root: str) -> list:
    """Names from `objectInfo150.csv` (first name of each `Name` cell, in `Idx` order), else the official list."""
    path = os.path.join(root, "objectInfo150.csv")
    if not os.path.isfile(path):
        return list(CLASS_NAMES)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = sorted((int(row["Idx"]), row["Name"].split(";")[0].strip()) for row in csv.DictReader(f))
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: expected columns Idx and Name ({error})") from None
    return [name for _, name in rows]


def read(path: str, split: str | None = None) -> Listing:
    """The image/annotation pairs of one split (None: both)."""
    root = _root(path)
    if not looks_like(path):
        raise DataError(f"{path}: expected ADE20K's images/training and annotations/training folders")
    if split is not None and split not in splits(path):
        raise DataError(f"{path}: no {SPLITS.get(split, split)} split (it holds {', '.join(splits(path))})")
    pairs, problems = [], []
    for name in splits(path) if split is None else [split]:
        folder = os.path.join(root, "annotations", SPLITS[name])
        for label in sorted(glob.glob(os.path.join(folder, "*.png"))):
            stem = os.path.splitext(os.path.basename(label))[0]
            image = os.path.join(root, "images", SPLITS[name], stem + ".jpg")
            if os.path.isfile(image):
                pairs.append((image, label))
            else:
                problems.append(f"{label}: no image (expected {image})")
    names = class_names(root)

    def read_label(pair):
        return TABLE[read_index_png(pair[1])]

    return Listing(NAME, root, pairs, read_label, names, problems)
