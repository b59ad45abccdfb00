"""PASCAL VOC 2012 segmentation and the Semantic Boundaries Dataset (SBD, "VOC augmented"): 21 classes.

Layouts: SBD's `ROOT/dataset/cls/*.mat` (MATLAB structs `GTcls` whose `Segmentation` holds class indices, read
with scipy) with `ROOT/dataset/img/*.jpg` and the split lists `ROOT/dataset/train.txt`, `val.txt` (ROOT may be
`benchmark_RELEASE` or its `dataset/` folder); or VOC's `ROOT/JPEGImages/*.jpg`, `ROOT/SegmentationClass/*.png`
(palette PNGs) with `ROOT/ImageSets/Segmentation/{train,val}.txt`. A set without split lists is one set. Values
0-20 are VOC's classes (names below), 255 (VOC's object borders) is ignored.

    split = kseg.data.load("benchmark_RELEASE", "train")    # kseg train --data ... (--format voc-sbd)
    split.class_names[15]                                   # 'person'
"""

import os

import numpy as np

from kseg.data.formats.common import Listing, read_index_png
from kseg.errors import DataError

NAME = "voc-sbd"
CLASS_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
SPLITS = ("train", "val", "trainval", "test")


def _layout(path):
    """(kind, images dir, labels dir, split-list dir, label extension) or None."""
    for root in (path, os.path.join(path, "dataset")):
        if os.path.isdir(os.path.join(root, "cls")) and os.path.isdir(os.path.join(root, "img")):
            return "sbd", os.path.join(root, "img"), os.path.join(root, "cls"), root, ".mat"
    lists = os.path.join(path, "ImageSets", "Segmentation")
    if os.path.isdir(os.path.join(path, "JPEGImages")) and os.path.isdir(os.path.join(path, "SegmentationClass")) \
            and os.path.isdir(lists):
        return "voc", os.path.join(path, "JPEGImages"), os.path.join(path, "SegmentationClass"), lists, ".png"
    return None


def looks_like(path: str) -> bool:
    """SBD's `cls/` + `img/` (under `dataset/` or not). VOC's own layout is read when named (--format voc-sbd):
    detected, a JPEGImages/ + SegmentationClass/ folder stays a plain kseg folder (its own classes)."""
    layout = _layout(path)
    return layout is not None and layout[0] == "sbd"


def splits(path: str) -> list:
    layout = _layout(path)
    return [s for s in SPLITS if layout and os.path.isfile(os.path.join(layout[3], s + ".txt"))]


def read_sbd_mat(path: str) -> np.ndarray:
    """`GTcls.Segmentation` of an SBD `.mat` file as uint8, or a DataError naming the file."""
    import scipy.io

    try:
        content = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        labels = np.asarray(content["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise DataError(f"{path}: not an SBD class file (needs a GTcls struct with Segmentation: {error})") from None
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise DataError(f"{path}: GTcls.Segmentation is not a 2-D array of labels 0-255")
    return labels.astype(np.uint8)


def read(path: str, split: str | None = None) -> Listing:
    """The image/label pairs of one split list (None: every list's names, or every label file without lists)."""
    layout = _layout(path)
    if layout is None:
        raise DataError(f"{path}: expected SBD's dataset/cls and dataset/img, or VOC's JPEGImages, "
                        f"SegmentationClass and ImageSets/Segmentation")
    kind, images, labels, lists, extension = layout
    available = splits(path)
    if split is not None and split not in available:
        raise DataError(f"{path}: no {split}.txt split list in {lists} (found: {', '.join(available) or 'none'})")
    problems, stems = [], []
    if available:
        for name in available if split is None else [split]:
            with open(os.path.join(lists, name + ".txt")) as f:
                stems += [line.split()[0] for line in f if line.strip()]
        stems = sorted(set(stems))
    else:
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(labels) if n.endswith(extension))
    pairs = []
    for stem in stems:
        image, label = os.path.join(images, stem + ".jpg"), os.path.join(labels, stem + extension)
        if not os.path.isfile(label):
            problems.append(f"{label}: listed in the split list but missing")
        elif not os.path.isfile(image):
            problems.append(f"{label}: no image (expected {image})")
        else:
            pairs.append((image, label))

    def read_label(pair):
        return read_sbd_mat(pair[1]) if kind == "sbd" else read_index_png(pair[1])

    return Listing(NAME, path, pairs, read_label, list(CLASS_NAMES), problems)
