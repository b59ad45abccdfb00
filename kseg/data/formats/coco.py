"""COCO annotation JSON (instances or stuff; panoptic not read) as semantic masks.

Layouts: a JSON file (`kseg.data.load("annotations/instances_val2017.json")`), or a folder holding
`annotations/*.json` (`instances_train2017.json` and `instances_val2017.json` are the train and val splits: the
file whose name holds "train" or "val"; a single JSON is one set) or one `*.json` at its top. Each image's
`file_name` is looked for next to the JSON, in its `images/` folder, in the folder's `images/` and in the split's
image folder (`train2017/` for `instances_train2017.json`).

Masks: every annotation's `segmentation` (polygons, uncompressed RLE or compressed RLE; crowd regions too) is
decoded with pycocotools and painted with its category's class. Classes: the categories sorted by id are 1..N,
0 is background (pixels no annotation covers); names from `categories`. Overlaps: **the smaller instance wins**
(annotations are painted largest area first, ties in file order, later on top), so a person standing in front
of a wall-sized stuff region stays a person. A polygon point more than a pixel outside its image, an unknown
category id, an image the annotations name that is not on disk, or malformed JSON is a one-line DataError.

    split = kseg.data.load("coco/annotations/instances_val2017.json", "train")   # or kseg train --data ...
    split.class_names[:3]                                                        # ['background', 'person', ...]
"""

import collections
import os
import re
import warnings
from typing import Any

import numpy as np

from kseg.data.formats.common import Listing, check_points, find_image, json_files, peek_json, read_json
from kseg.errors import DataError

NAME = "coco"
SPLIT_WORDS = {"train": "train", "val": "val", "test": "test"}


def is_coco(content) -> bool:
    return isinstance(content, dict) and isinstance(content.get("images"), list) and \
        isinstance(content.get("annotations"), list) and isinstance(content.get("categories"), list)


def _candidates(path):
    if os.path.isfile(path):
        return [path]
    return json_files(os.path.join(path, "annotations")) or json_files(path)


def looks_like(path: str) -> bool:
    """A COCO JSON file, or a folder with one (in `annotations/` or at its top)."""
    files = _candidates(path)
    return bool(files) and (os.path.isfile(path) or len(files) <= 8) and is_coco(peek_json(files[0]))


def _split_files(path):
    """{split: JSON file} for a folder with one JSON per split; {None: file} for a single set."""
    files = _candidates(path)
    by_split = {}
    for file in files:
        stem = os.path.basename(file).lower()
        for split, word in SPLIT_WORDS.items():
            if re.search(rf"(^|[^a-z]){word}", stem) and split not in by_split:
                by_split[split] = file
    if len(files) == 1 or not by_split:
        return {None: files[0]} if files else {}
    return by_split


def splits(path: str) -> list:
    return [s for s in _split_files(path) if s is not None]


def read(path: str, split: str | None = None) -> Listing:
    """The images and annotations of one split (None: every split, or the single set)."""
    files = _split_files(path)
    if not files:
        raise DataError(f"{path}: no COCO annotation JSON (expected annotations/*.json or a .json file)")
    chosen = list(files.values()) if split is None or None in files else [files[split]] if split in files else None
    if chosen is None:
        raise DataError(f"{path}: no {split!r} annotations (it holds {', '.join(map(str, files))})")
    root = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    pairs: list = []
    problems: list[str] = []
    entries: dict = {}
    categories: dict[int, Any] = {}
    for file in chosen:
        content = read_json(file)
        if not is_coco(content):
            raise DataError(f"{file}: not a COCO annotation file (needs images, annotations and categories lists)")
        ids = sorted(int(c["id"]) for c in content["categories"])
        if file is not chosen[0] and ids != sorted(categories):
            raise DataError(f"{file}: its categories differ from those of {chosen[0]}")
        categories = {int(c["id"]): c.get("name", f"category_{c['id']}") for c in content["categories"]}
        found = _images(file, content, root, split, problems)
        by_image = collections.defaultdict(list)
        listed = {info.get("id") for info in content["images"]}
        for number, annotation in enumerate(content["annotations"]):
            image_id = annotation.get("image_id")
            if image_id not in listed:
                problems.append(f"{file}: annotation {annotation.get('id', f'#{number}')} names image id "
                                f"{image_id!r}, which its images list lacks")
            by_image[image_id].append(annotation)
        for image_id, (image_path, info) in found.items():
            pairs.append((image_path, file))
            entries[(image_path, file)] = (info, by_image.get(image_id, []))
    if len(categories) > 254:
        raise DataError(f"{chosen[0]}: {len(categories)} categories; kseg's masks hold at most 254 and background")
    classes = {category: index + 1 for index, category in enumerate(sorted(categories))}

    def read_label(pair):
        info, annotations = entries[pair]
        return draw(info, annotations, classes, pair[1])

    names = ["background"] + [categories[c] for c in sorted(categories)]
    return Listing(NAME, root, sorted(pairs), read_label, names, problems)


def _images(file, content, root, split, problems):
    """{image id: (image path, info)} of the images the JSON lists that are on disk; the others are problems."""
    folder = os.path.dirname(os.path.abspath(file))
    stem = os.path.splitext(os.path.basename(file))[0]
    split_dir = stem.split("_", 1)[1] if "_" in stem else stem  # instances_train2017 -> train2017
    places = [folder, os.path.join(folder, "images"), root, os.path.join(root, "images"),
              os.path.join(root, split_dir), os.path.join(os.path.dirname(folder), split_dir),
              os.path.join(root, "images", split_dir)]
    found = {}
    for info in content["images"]:
        name = info.get("file_name", "")
        image_path = find_image(name, places)
        if image_path is None:
            problems.append(f"{file}: image {info.get('id')} names {name!r}, which is not in {folder} or its "
                            f"images/ folder")
        elif not isinstance(info.get("height"), int) or not isinstance(info.get("width"), int):
            problems.append(f"{file}: image {info.get('id')} ({name}) has no integer height and width")
        else:
            found[info.get("id")] = (image_path, info)
    return found


def draw(info: dict, annotations: list, classes: dict, file: str) -> np.ndarray:
    """The semantic mask of one image: every annotation decoded, smaller instances over larger ones."""
    from pycocotools import mask as coco_mask

    height, width = info["height"], info["width"]
    shapes = []
    for number, annotation in enumerate(annotations):
        where = f"{file}: annotation {annotation.get('id', f'#{number}')} (image {info.get('id')})"
        if annotation.get("category_id") not in classes:
            raise DataError(f"{where} has unknown category id {annotation.get('category_id')!r}")
        segmentation = annotation.get("segmentation")
        try:
            if isinstance(segmentation, list):  # polygons
                if not segmentation:
                    continue
                for polygon in segmentation:
                    check_points(polygon, height, width, where)
                rle = coco_mask.merge(coco_mask.frPyObjects([list(map(float, p)) for p in segmentation],
                                                            height, width))
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = coco_mask.frPyObjects(segmentation, height, width)  # uncompressed RLE
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
                rle = dict(segmentation)
            else:
                raise DataError(f"{where}: segmentation is neither polygons nor RLE")
            if isinstance(rle, dict) and list(rle.get("size", [])) != [height, width]:
                raise DataError(f"{where}: RLE size {rle.get('size')} is not the image's {[height, width]} "
                                f"(height, width)")
            with warnings.catch_warnings():  # pycocotools 2.0 under numpy 2: a copy= deprecation, not ours
                warnings.simplefilter("ignore", DeprecationWarning)
                region = coco_mask.decode(rle).astype(bool)
        except DataError:
            raise
        except Exception as error:  # pycocotools raises bare Exceptions and TypeErrors on bad input
            raise DataError(f"{where}: cannot decode its segmentation ({error})") from None
        shapes.append((-int(region.sum()), number, region, classes[annotation["category_id"]]))
    mask = np.zeros((height, width), np.uint8)
    for _, _, region, label in sorted(shapes, key=lambda s: s[:2]):  # largest first: smaller ones end on top
        mask[region] = label
    return mask
