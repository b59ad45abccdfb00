"""labelme: one JSON per image with `shapes` ({label, points, shape_type}), `imagePath`, optional `imageData`.

Layout: a folder of `*.json` files (and their images, at `imagePath` relative to each JSON; `imageData`, the
image's file base64-encoded, is read when the file is not there). Shapes: polygon, rectangle (two corners),
circle (centre and a point on the rim); lines and points cover no pixels and are left out. Shapes are painted
in file order, **later shapes over earlier ones** (as labelme's own labelme2voc draws them). Classes:
`labels.txt` next to the JSONs when there is one (one name a line, class 0 first; labelme's `__ignore__` first
line is the ignore label 255 and `_background_` is background), else background 0 and every label found across
the folder, sorted.

    split = kseg.data.load("my_labelme_folder", "train")   # kseg train --data ... (--format labelme)
"""

import base64
import io
import os

import numpy as np
from PIL import Image

from kseg.data.formats.common import (
    Listing,
    check_points,
    fill_ellipse,
    fill_polygon,
    find_image,
    json_files,
    label_file,
    names_from_labels,
    peek_json,
    read_json,
)
from kseg.errors import DataError

NAME = "labelme"
AREA_SHAPES = ("polygon", "rectangle", "circle")
NO_AREA = ("line", "linestrip", "point", "points")


def is_labelme(content) -> bool:
    return isinstance(content, dict) and isinstance(content.get("shapes"), list) and "imagePath" in content


def looks_like(path: str) -> bool:
    """A folder whose first JSON file is a labelme annotation."""
    files = json_files(path) if os.path.isdir(path) else []
    return bool(files) and is_labelme(peek_json(files[0]))


def splits(path: str) -> list:
    return []  # one set: kseg holds a fifth out to validate


def read(path: str, split: str | None = None) -> Listing:
    """Every labelme JSON in the folder (split: None or any name; see `splits`)."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: a labelme dataset is a folder of .json files")
    problems, found = [], {}
    for file in json_files(path):
        try:
            content = read_json(file)
        except DataError as error:
            problems.append(str(error))
            continue
        if not is_labelme(content):
            problems.append(f"{file}: not a labelme annotation (needs shapes and imagePath)")
            continue
        image = find_image(content.get("imagePath") or "", [os.path.dirname(file)])
        if image is None and not content.get("imageData"):
            problems.append(f"{file}: names image {content.get('imagePath')!r}, which is not in {path} "
                            f"(and it holds no imageData)")
            continue
        found[(image or file, file)] = content
    labelled = label_file(os.path.join(path, "labels.txt"))
    if labelled:
        names, table = labelled
    else:
        names = names_from_labels(shape.get("label", "") for content in found.values()
                                  for shape in content["shapes"] if shape.get("shape_type", "polygon") in AREA_SHAPES)
        table = {name: index for index, name in enumerate(names)}
        table["_background_"] = 0

    def read_image(pair):
        if pair[0] != pair[1]:
            from kseg.data.pairs import decode_image_file

            return decode_image_file(pair[0])
        return decode_image_data(found[pair].get("imageData"), pair[1])

    def read_label(pair):
        content = found[pair]
        height, width = content.get("imageHeight"), content.get("imageWidth")
        if not (isinstance(height, int) and isinstance(width, int)):
            height, width = read_image(pair).shape[:2]
        return draw(content["shapes"], height, width, table, pair[1])

    embedded = any(image == file for image, file in found)
    return Listing(NAME, path, sorted(found), read_label, names, problems, read_image if embedded else None)


def decode_image_data(data, file: str) -> np.ndarray:
    """The RGB pixels of a base64-encoded image file (labelme's `imageData`)."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(data or ""))) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{file}: imageData is not a base64 image file ({error})") from None


def draw(shapes: list, height: int, width: int, table: dict, file: str) -> np.ndarray:
    """A mask of `shapes` in file order, later over earlier."""
    mask = np.zeros((height, width), np.uint8)
    for number, shape in enumerate(shapes):
        label, kind = shape.get("label"), shape.get("shape_type") or "polygon"
        where = f"{file}: shape {number} ({label!r}, {kind})"
        if kind in NO_AREA:
            continue
        if kind not in AREA_SHAPES:
            raise DataError(f"{where}: unsupported shape type (kseg draws {', '.join(AREA_SHAPES)})")
        if label not in table:
            raise DataError(f"{where}: label is not in {os.path.join(os.path.dirname(file), 'labels.txt')}")
        points = check_points(shape.get("points"), height, width, where)
        if kind == "rectangle":
            if len(points) != 2:
                raise DataError(f"{where}: a rectangle needs two corner points")
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        if kind == "circle":
            if len(points) != 2:
                raise DataError(f"{where}: a circle needs its centre and a point on its rim")
            fill_ellipse(mask, points[0], float(np.hypot(*(points[1] - points[0]))), table[label])
        else:
            fill_polygon(mask, points, table[label])
    return mask
