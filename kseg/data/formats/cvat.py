"""CVAT exports: "Segmentation mask 1.1" (colour masks and a label map) and "CVAT for images 1.1" (XML polygons).

Segmentation mask 1.1: `ROOT/labelmap.txt` (`name:r,g,b:parts:actions` a line), `ROOT/SegmentationClass/*.png`
(RGB, each pixel its label's colour), the images in `ROOT/JPEGImages/` (or `images/`), and split lists in
`ROOT/ImageSets/Segmentation/` (`train.txt` and `val.txt` are splits; `default.txt` alone is one set). Classes in
label-map order, background first (added as (0, 0, 0) when the map lacks it); a colour the map lacks is an error.

CVAT for images 1.1: `ROOT/annotations.xml` (or the XML file itself) with `<image name width height>` holding
`<polygon label points="x,y;x,y;...">` and `<box label xtl ytl xbr ybr>`; images in `ROOT/images/`. Shapes are
painted by `z_order`, then file order, **later over earlier**; polylines and points cover no pixels. Classes:
background 0, then the labels of the XML's `<meta>` in order (else every label found, sorted).

    split = kseg.data.load("cvat_export", "train")   # kseg train --data cvat_export (--format cvat)
"""

import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from kseg.data.formats.common import IMAGE_EXTENSIONS, Listing, check_points, fill_polygon, find_image
from kseg.data.masks import read_mask
from kseg.errors import DataError

NAME = "cvat"
LISTS = os.path.join("ImageSets", "Segmentation")
NO_AREA = ("polyline", "points", "tag", "skeleton", "cuboid", "ellipse_outline")


def _xml(path):
    if os.path.isfile(path):
        return path if path.lower().endswith(".xml") else None
    candidate = os.path.join(path, "annotations.xml")
    return candidate if os.path.isfile(candidate) else None


def looks_like(path: str) -> bool:
    """A mask export (`labelmap.txt` + `SegmentationClass/`) or a CVAT XML (`annotations.xml`)."""
    if os.path.isfile(os.path.join(path, "labelmap.txt")) and os.path.isdir(os.path.join(path, "SegmentationClass")):
        return True
    xml = _xml(path)
    if xml is None:
        return False
    try:
        for _, element in ElementTree.iterparse(xml, events=("start",)):
            return element.tag == "annotations"
    except ElementTree.ParseError:
        return False
    return False


def splits(path: str) -> list:
    folder = os.path.join(path, LISTS)
    if _xml(path) or not os.path.isdir(folder):
        return []
    return [s for s in ("train", "val", "test") if os.path.isfile(os.path.join(folder, s + ".txt"))]


def read_labelmap(path: str) -> tuple[list, dict]:
    """(names, {(r, g, b): class}) of a CVAT `labelmap.txt`, background first."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, _, rest = line.rstrip("\n").partition(":")
            try:
                colour = tuple(int(c) for c in rest.split(":")[0].split(","))
                assert len(colour) == 3
            except (ValueError, AssertionError):
                raise DataError(f"{path}: line {number} is not name:r,g,b:parts:actions ({line.strip()!r})") from None
            entries.append((name, colour))
    background = [e for e in entries if e[0] == "background"] or [("background", (0, 0, 0))]
    entries = background + [e for e in entries if e[0] != "background"]
    return [name for name, _ in entries], {colour: index for index, (_, colour) in enumerate(entries)}


def read(path: str, split: str | None = None) -> Listing:
    """The pairs of a CVAT export (one split list, or every mask with split None)."""
    xml = _xml(path)
    if xml:
        return _read_xml(xml, path)
    if not looks_like(path):
        raise DataError(f"{path}: expected CVAT's labelmap.txt and SegmentationClass/ (or annotations.xml)")
    names, colors = read_labelmap(os.path.join(path, "labelmap.txt"))
    masks = os.path.join(path, "SegmentationClass")
    if split is not None and split in splits(path):
        with open(os.path.join(path, LISTS, split + ".txt")) as f:
            stems = sorted({line.strip() for line in f if line.strip()})
    else:
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(masks) if n.endswith(".png"))
    places = [os.path.join(path, "JPEGImages"), os.path.join(path, "images"), path]
    pairs, problems = [], []
    for stem in stems:
        mask = os.path.join(masks, stem + ".png")
        image = next((found for ext in IMAGE_EXTENSIONS for found in [find_image(stem + ext, places)] if found), None)
        if not os.path.isfile(mask):
            problems.append(f"{mask}: listed in {LISTS} but missing")
        elif image is None:
            problems.append(f"{mask}: no image {stem}.* in JPEGImages/ (export with images, or put them there)")
        else:
            pairs.append((image, mask))
    return Listing(NAME, path, pairs, lambda pair: read_mask(pair[1], colors), names, problems)


def _read_xml(xml, path):
    try:
        tree = ElementTree.parse(xml)
    except ElementTree.ParseError as error:
        raise DataError(f"{xml}: malformed XML ({error})") from None
    root = os.path.dirname(os.path.abspath(xml))
    meta = [label.findtext("name") for label in tree.getroot().iter("label") if label.findtext("name")]
    images = tree.getroot().findall("image")
    if meta:
        names = ["background"] + [n for n in dict.fromkeys(meta) if n != "background"]
    else:
        found = {shape.get("label") for image in images for shape in image if shape.get("label")}
        names = ["background"] + sorted(found - {"background"})
    table = {name: index for index, name in enumerate(names)}
    pairs, problems, entries = [], [], {}
    for element in images:
        name = element.get("name", "")
        image = find_image(name, [os.path.join(root, "images"), root])
        if image is None:
            problems.append(f"{xml}: image {element.get('id')} names {name!r}, which is not in {root}/images")
            continue
        pairs.append((image, xml))
        entries[image] = element

    def read_label(pair):
        return draw(entries[pair[0]], table, pair[1])

    return Listing(NAME, path if os.path.isdir(path) else root, sorted(pairs), read_label, names, problems)


def draw(image: ElementTree.Element, table: dict, xml: str) -> np.ndarray:
    """The mask of one `<image>`: polygons and boxes by z_order, later over earlier."""
    try:
        height, width = int(image.get("height", "")), int(image.get("width", ""))
    except (TypeError, ValueError):
        raise DataError(f"{xml}: image {image.get('name')!r} has no integer height and width") from None
    mask = np.zeros((height, width), np.uint8)
    shapes = sorted(enumerate(image), key=lambda item: (int(item[1].get("z_order") or 0), item[0]))
    for number, shape in shapes:
        label = shape.get("label")
        where = f"{xml}: image {image.get('name')!r}, {shape.tag} {number} ({label!r})"
        if shape.tag in NO_AREA:
            continue
        if shape.tag not in ("polygon", "box"):
            raise DataError(f"{where}: kseg reads polygons and boxes from CVAT XML (export masks as "
                            f"Segmentation mask 1.1)")
        if label not in table:
            raise DataError(f"{where}: label is not among the XML's labels")
        try:
            if shape.tag == "box":
                x0, y0, x1, y1 = (float(shape.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
                points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
            else:
                points = [[float(v) for v in point.split(",")] for point in shape.get("points", "").split(";")]
        except (TypeError, ValueError):
            raise DataError(f"{where}: coordinates are not numbers") from None
        fill_polygon(mask, check_points(points, height, width, where), table[label])
    return mask
