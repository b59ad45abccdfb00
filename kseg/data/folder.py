"""Folders of images and masks, paired by file stem, checked before training touches them.

Layouts: `DIR/images` + `DIR/masks`, or PASCAL VOC's `DIR/JPEGImages` + `DIR/SegmentationClass`.
Images: PNG, JPEG or BMP (grey, RGB or RGBA; all become RGB). Masks: PNG (or BMP) holding class
indices: single-channel index images, palette images (VOC; decoded to their indices, not colours),
or RGB colour-coded masks with a `colors` table {(r, g, b): class}. 255 means "ignore".
Masks holding only 0 and 255 are read as binary (255 = foreground, class 1), the way black-and-white
mask files are usually meant. Class names come from `classes.txt` (one per line) in the folder or its
parent, when there is one. Hidden files and other stray files (`.DS_Store`, `Thumbs.db`, a README,
`.npy` side files) are skipped with a note, not treated as errors.
"""

import os

from kseg.data.cache import FolderCheckCache
from kseg.data.masks import read_mask
from kseg.data.pairs import HOLDOUT, IN_MEMORY_BYTES, DataReport, check_pairs, holdout, note, to_split
from kseg.data.pairs import image_size as _image_size
from kseg.data.source import Split
from kseg.errors import DataError

__all__ = ["HOLDOUT", "IN_MEMORY_BYTES", "DataReport", "check", "find_layout", "from_folder", "holdout",
           "names_of", "note", "read_mask"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MASK_EXTENSIONS = (".png", ".bmp")
LAYOUTS = (("images", "masks"), ("JPEGImages", "SegmentationClass"))


def find_layout(root):
    """(images_dir, masks_dir) under `root`, or a DataError that says what was expected."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    for images, masks in LAYOUTS:
        pair = os.path.join(root, images), os.path.join(root, masks)
        if os.path.isdir(pair[0]) and os.path.isdir(pair[1]):
            return pair
    raise DataError(f"{root}: expected subfolders images/ and masks/ (or VOC's JPEGImages/ and SegmentationClass/)")


def _files_by_stem(directory, extensions, problems, skipped):
    """{stem: path} of the files with `extensions`; hidden and other files go to `skipped` with the reason."""
    files = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if name.startswith("."):
            skipped.append(f"{path}: hidden file")
        elif ext.lower() not in extensions:
            skipped.append(f"{path}: not a {'/'.join(e[1:] for e in extensions)} file")
        elif stem in files:
            problems.append(f"{path}: same name as {files[stem]} (pairs are matched by name)")
        else:
            files[stem] = path
    return files


def check(root, num_classes=None, colors=None, workers=4, use_cache=True):
    """Scans a folder dataset: pairs by stem, decodes every file, checks sizes and label ranges.

    Never raises for bad files; returns a DataReport listing each problem as "path: what is wrong".
    A pair found good before, whose two files kept their sizes and modification times, is not decoded
    again (`kseg.data.cache`; `use_cache=False` checks everything).
    """
    images_dir, masks_dir = find_layout(root)
    problems, skipped = [], []
    if not os.listdir(images_dir):
        problems.append(f"{images_dir}: empty folder (no images)")
    images = _files_by_stem(images_dir, IMAGE_EXTENSIONS, problems, skipped)
    masks = _files_by_stem(masks_dir, MASK_EXTENSIONS, problems, skipped)
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[stem]}: no mask (expected {os.path.join(masks_dir, stem)}.png)")
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[stem]}: mask without an image")
    pairs = [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    if not pairs and not problems:
        problems.append(f"{images_dir}: empty folder (no image/mask pairs)")

    cache = FolderCheckCache(root, colors) if use_cache else None
    return check_pairs(root, pairs, lambda pair: read_mask(pair[1], colors),
                       image_size_of=lambda pair: _image_size(pair[0]), num_classes=num_classes, problems=problems,
                       skipped=skipped, cache=cache, workers=workers, detect_binary=colors is None)


def names_of(root, report):
    """The class names of a checked folder: its `classes.txt`, else generic names for the class count."""
    from kseg.data.pairs import default_names

    return report.class_names or _class_names_file(root) or default_names(report.num_classes)


def _class_names_file(root):
    """Class names from `classes.txt` (one per line, in label order) in the folder or its parent."""
    for directory in (root, os.path.dirname(os.path.abspath(root))):
        path = os.path.join(directory, "classes.txt")
        if os.path.exists(path):
            with open(path) as f:
                return [line.strip() for line in f if line.strip()]
    return None


def from_folder(root: str, num_classes: int | None = None, class_names: list[str] | None = None,
                colors: dict | None = None, subset: str | None = None) -> Split:
    """A Split from a folder dataset, after `check`: any problem raises a DataError naming the file.

    `subset` "train" or "val" splits a folder that has no val/ folder: about a fifth of the pairs
    (chosen by file name) validate, the rest train; None keeps every pair.
    """
    report = check(root, num_classes=num_classes, colors=colors)
    report.raise_first()
    if report.skipped:
        more = f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else ""
        note(f"skipped {report.skipped[0]}{more} (kseg data check {root} lists them)")
    if report.binary_255:
        note(f"{root}: masks hold only 0 and 255; reading 255 as the foreground class 1, not as ignore")
    return to_split(report, subset, class_names or names_of(root, report))
