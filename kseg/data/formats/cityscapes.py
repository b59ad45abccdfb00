"""Cityscapes fine annotations, mapped to the 19 training classes.

Layout: `ROOT/leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png` and
`ROOT/gtFine/{train,val,test}/CITY/*_gtFine_labelIds.png` (`ROOT/gtCoarse/..._gtCoarse_labelIds.png` is read
when there is no `gtFine/`). Label ids become the 19 train ids of the official table below; every other id
(void, license plate, the classes the benchmark leaves out) becomes 255 and is ignored.

    split = kseg.data.load("cityscapes", "val")    # kseg train --data cityscapes (--format cityscapes)
    split.class_names[:3]                          # ['road', 'sidewalk', 'building']
"""

import glob
import os

from kseg.data.formats.common import Listing, lookup_table, read_index_png, split_folders
from kseg.errors import DataError

NAME = "cityscapes"
# label id -> (train id, name): the entries of cityscapesScripts' labels.py whose trainId is not 255 or -1
# (github.com/mcordts/cityscapesScripts, cityscapesscripts/helpers/labels.py).
TRAIN_IDS = {
    7: (0, "road"), 8: (1, "sidewalk"), 11: (2, "building"), 12: (3, "wall"), 13: (4, "fence"), 17: (5, "pole"),
    19: (6, "traffic light"), 20: (7, "traffic sign"), 21: (8, "vegetation"), 22: (9, "terrain"), 23: (10, "sky"),
    24: (11, "person"), 25: (12, "rider"), 26: (13, "car"), 27: (14, "truck"), 28: (15, "bus"), 31: (16, "train"),
    32: (17, "motorcycle"), 33: (18, "bicycle"),
}
CLASS_NAMES = [name for _, name in sorted(TRAIN_IDS.values())]
TABLE = lookup_table({label_id: train_id for label_id, (train_id, _) in TRAIN_IDS.items()})
SPLITS = {"train": "train", "val": "val", "test": "test"}
IMAGE_SUFFIX = "_leftImg8bit.png"


def _annotations(root):
    for folder, suffix in (("gtFine", "_gtFine_labelIds.png"), ("gtCoarse", "_gtCoarse_labelIds.png")):
        if os.path.isdir(os.path.join(root, folder)):
            return folder, suffix
    return None


def looks_like(path: str) -> bool:
    """A folder with `leftImg8bit/` and `gtFine/` (or `gtCoarse/`)."""
    return os.path.isdir(os.path.join(path, "leftImg8bit")) and _annotations(path) is not None


def splits(path: str) -> list:
    return list(split_folders(os.path.join(path, "leftImg8bit"), SPLITS))


def read(path: str, split: str | None = None) -> Listing:
    """The image/label-id pairs of one split (None: train and val)."""
    if not looks_like(path):
        raise DataError(f"{path}: expected Cityscapes' leftImg8bit/ and gtFine/ folders")
    folder, suffix = _annotations(path)
    chosen = [s for s in splits(path) if s != "test"] if split is None else [split]
    if split is not None and split not in splits(path):
        raise DataError(f"{path}: no leftImg8bit/{split} folder (it holds {', '.join(splits(path)) or 'none'})")
    pairs, problems = [], []
    for name in chosen:
        for image in sorted(glob.glob(os.path.join(path, "leftImg8bit", SPLITS[name], "*", "*" + IMAGE_SUFFIX))):
            city, file = image.split(os.sep)[-2:]
            label = os.path.join(path, folder, SPLITS[name], city, file[: -len(IMAGE_SUFFIX)] + suffix)
            if os.path.isfile(label):
                pairs.append((image, label))
            else:
                problems.append(f"{image}: no label ids (expected {label})")
    if not pairs and not problems:
        problems.append(f"{os.path.join(path, 'leftImg8bit')}: no *{IMAGE_SUFFIX} images for {split or 'any split'}")

    def read_label(pair):
        return TABLE[read_index_png(pair[1])]

    return Listing(NAME, path, pairs, read_label, list(CLASS_NAMES), problems)
