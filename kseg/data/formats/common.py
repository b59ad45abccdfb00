"""What every annotation format reader shares: the `Listing` it returns, and small helpers (reading JSON with a
one-line error, drawing polygons, finding the image an annotation names, label tables)."""

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from kseg import IGNORE_LABEL
from kseg.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
OUTSIDE = 1.0  # a polygon point more than this many pixels outside its image is an error, not clipped


@dataclasses.dataclass
class Listing:
    """One split of an annotated dataset, as a format reader found it.

    `pairs`: (image file, annotation file) per example: what problem lines name, and what the check cache stamps
    (a pair is checked again when either file changes). `read_label(pair)` draws the pair's class indices (uint8
    (H, W), 0 background, 255 ignore), raising a DataError naming the annotation. `problems`: what listing found
    wrong (malformed files, images an annotation names that are missing). `read_image(pair)`: pixels for images
    that are not files of their own (labelme's embedded `imageData`), None when every image is a file.
    """

    format: str
    root: str
    pairs: list
    read_label: Callable[[tuple], np.ndarray]
    class_names: list
    problems: list = dataclasses.field(default_factory=list)
    read_image: Callable[[tuple], np.ndarray] | None = None


_LAST_JSON: dict = {}  # (path, size, mtime) -> content: detection and reading parse a large export once


def read_json(path: str):
    """A JSON file's content, or a DataError naming the file and where it stops parsing."""
    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key in _LAST_JSON:
            return _LAST_JSON[key]
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
        _LAST_JSON.clear()
        _LAST_JSON[key] = content
        return content
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def peek_json(path: str):
    """A JSON file's content, or None when it does not parse (for detection: never raises)."""
    try:
        return read_json(path)
    except DataError:
        return None


def json_files(folder: str) -> list:
    """The `.json` files directly in `folder`, sorted (hidden ones left out)."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".json") and n[0] != "."]


def find_image(name: str, folders) -> str | None:
    """The first existing `folder/name` (or `folder/basename(name)`), else None (Windows separators read too)."""
    name = name.replace("\\", "/")
    for folder in folders:
        for candidate in (os.path.join(folder, name), os.path.join(folder, os.path.basename(name))):
            if os.path.isfile(candidate):
                return candidate
    return None


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file from its header, or a DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: cannot decode image ({error})") from None


def check_points(points, height: int, width: int, where: str) -> np.ndarray:
    """Points as a float (N, 2) array of (x, y) after checking they lie on the image (within `OUTSIDE` pixels)."""
    try:
        array = np.asarray(points, np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise DataError(f"{where}: points are not (x, y) pairs") from None
    if not np.isfinite(array).all():
        raise DataError(f"{where}: points are not finite numbers")
    outside = (array[:, 0] < -OUTSIDE) | (array[:, 0] > width + OUTSIDE) | \
        (array[:, 1] < -OUTSIDE) | (array[:, 1] > height + OUTSIDE)
    if outside.any():
        x, y = array[np.flatnonzero(outside)[0]]
        raise DataError(f"{where}: point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return array


def fill_polygon(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    """Fills a polygon of (x, y) coordinates into `mask` in place: pixel (i, j) (row, column) is covered when its
    centre (j + 0.5, i + 0.5) is inside, so a rectangle with corners (0, 0) and (w, h) covers exactly w x h
    pixels (the convention of COCO's and CVAT's coordinates)."""
    from matplotlib.path import Path

    if len(points) < 3:
        return
    low = np.clip(np.floor(points.min(0)).astype(int), 0, None)
    high = np.minimum(np.ceil(points.max(0)).astype(int), (mask.shape[1], mask.shape[0]))
    if (high <= low).any():
        return
    yy, xx = np.mgrid[low[1]: high[1], low[0]: high[0]] + 0.5
    inside = Path(points).contains_points(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(xx.shape)
    mask[low[1]: high[1], low[0]: high[0]][inside] = value


def fill_ellipse(mask: np.ndarray, centre, radius: float, value: int) -> None:
    """Fills the disc of `radius` around `centre` (x, y): pixels whose centres lie inside."""
    yy, xx = np.mgrid[0: mask.shape[0], 0: mask.shape[1]] + 0.5
    mask[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius * radius] = value


def names_from_labels(labels, background: str = "background") -> list:
    """Class names for labels found across a dataset: background first, then the labels sorted."""
    return [background] + sorted(set(labels) - {background, "_background_"})


def label_file(path: str):
    """(names, {label: class}) from a labels file (one name a line, class 0 first; labelme's `__ignore__` as a
    first line is the ignore label 255, `_background_` is background), or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    table = {}
    if lines and lines[0] == "__ignore__":
        table["__ignore__"] = IGNORE_LABEL
        lines = lines[1:]
    table.update({name: index for index, name in enumerate(lines)})
    return ["background" if name == "_background_" else name for name in lines], table


def lookup_table(mapping: dict) -> np.ndarray:
    """A 256-entry uint8 table: value -> class per `mapping`, every other value the ignore label."""
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for value, label in mapping.items():
        table[value] = label
    return table


def read_index_png(path: str) -> np.ndarray:
    """The values of an index (or palette, or grey) PNG, or a DataError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"{path}: expected a single-channel label PNG, found mode {image.mode}")
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: cannot decode mask ({error})") from None
    if array.max(initial=0) > 255 or array.min(initial=0) < 0:
        raise DataError(f"{path}: value {array.max()} does not fit 0-255")
    return array.astype(np.uint8)


def split_folders(root: str, names: dict) -> dict:
    """{kseg split: folder name} of the split folders that exist under `root`; `names` maps kseg's split names
    ("train", "val", "test") to the dataset's own."""
    return {split: name for split, name in names.items() if os.path.isdir(os.path.join(root, name))}
