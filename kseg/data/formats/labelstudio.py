"""Label Studio's JSON export: tasks with `data.image` and `annotations[].result[]` regions.

Layout: the export file (`project-1-at-....json`: a list of tasks), or a folder holding it at its top, with the
images next to it or in its `images/` folder, found by the file name `data.image` ends with (Label Studio's
upload prefix `1a2b3c4d-` stripped when the file is not there under its full name; `?d=` local-file URLs too).
Regions: `polygonlabels` (points in percent of the image), `rectanglelabels` (x, y, width, height in percent,
`rotation` in degrees about the top-left corner) and `brushlabels` (Label Studio's RLE of the RGBA brush
image, decoded by the `label-studio-converter` package: `pip install "kseg[labelstudio]"`). A task's first
annotation that was not cancelled is read; regions are painted in order, **later over earlier**. Classes:
`labels.txt` next to the export when there is one (as labelme's), else background 0 and every label found,
sorted.

    split = kseg.data.load("project-1-at-2024-05-01.json", "train")   # kseg train --data ... (--format labelstudio)
"""

import os
import re
import urllib.parse

import numpy as np

from kseg.data.formats.common import (
    Listing,
    check_points,
    fill_polygon,
    find_image,
    json_files,
    label_file,
    names_from_labels,
    peek_json,
    read_json,
)
from kseg.errors import DataError

NAME = "labelstudio"
KINDS = {"polygonlabels": "polygonlabels", "rectanglelabels": "rectanglelabels", "brushlabels": "brushlabels"}


def is_labelstudio(content) -> bool:
    return isinstance(content, list) and bool(content) and isinstance(content[0], dict) and \
        "data" in content[0] and ("annotations" in content[0] or "completions" in content[0])


def _export(path):
    if os.path.isfile(path):
        return path
    return next((file for file in json_files(path) if is_labelstudio(peek_json(file))), None)


def looks_like(path: str) -> bool:
    """A Label Studio JSON export, or a folder with one at its top."""
    if os.path.isfile(path):
        return path.endswith(".json") and is_labelstudio(peek_json(path))
    files = json_files(path)
    return 0 < len(files) <= 4 and _export(path) is not None


def splits(path: str) -> list:
    return []  # one set: kseg holds a fifth out to validate


def image_name(url: str) -> str:
    """The file name a task's `data.image` URL ends with (`/data/local-files/?d=dir/a.jpg` gives `dir/a.jpg`)."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    return query["d"][0] if "d" in query else urllib.parse.unquote(urllib.parse.urlparse(url).path)


def _regions(task):
    annotations = [a for a in task.get("annotations") or task.get("completions") or []
                   if isinstance(a, dict) and not a.get("was_cancelled")]
    results = annotations[0].get("result", []) if annotations else []
    return [r for r in results if isinstance(r, dict) and r.get("type") in KINDS]


def read(path: str, split: str | None = None) -> Listing:
    """Every task of the export whose image is on disk (split: None or any name; see `splits`)."""
    export = _export(path)
    if export is None:
        raise DataError(f"{path}: no Label Studio JSON export (a list of tasks with data and annotations)")
    content = read_json(export)
    if not is_labelstudio(content):
        raise DataError(f"{export}: not a Label Studio JSON export (a list of tasks with data and annotations)")
    folder = os.path.dirname(os.path.abspath(export))
    places = [folder, os.path.join(folder, "images")] + ([os.path.join(path, "images")] if os.path.isdir(path) else [])
    problems, entries = [], {}
    for task in content:
        url = str((task.get("data") or {}).get("image", ""))
        name = image_name(url)
        stripped = re.sub(r"^[0-9a-f]{8}-", "", os.path.basename(name))
        image = find_image(name, places) or find_image(stripped, places)
        if image is None:
            problems.append(f"{export}: task {task.get('id')} names image {url!r}, which is not in {folder} "
                            f"or its images/ folder")
        elif (image, export) in entries:
            problems.append(f"{export}: task {task.get('id')} names image {name!r} again")
        else:
            entries[(image, export)] = task
    labelled = label_file(os.path.join(folder, "labels.txt"))
    if labelled:
        names, table = labelled
    else:
        names = names_from_labels(label for task in entries.values() for region in _regions(task)
                                  for label in (region.get("value") or {}).get(region["type"], []))
        table = {name: index for index, name in enumerate(names)}

    def read_label(pair):
        task = entries[pair]
        return draw(task, _regions(task), table, pair[1], pair[0])

    return Listing(NAME, folder, sorted(entries), read_label, names, problems)


def draw(task: dict, regions: list, table: dict, export: str, image: str) -> np.ndarray:
    """A task's mask: its regions in order, later over earlier (at the regions' `original_height` and
    `original_width`, else the size of the image file)."""
    from kseg.data.formats.common import image_size

    sizes = {(r.get("original_height"), r.get("original_width")) for r in regions}
    if len(sizes) == 1 and all(isinstance(v, int) for v in next(iter(sizes))):
        height, width = next(iter(sizes))
    else:  # no regions, or sizes left out: the image's own
        height, width = image_size(image)
    mask = np.zeros((height, width), np.uint8)
    for number, region in enumerate(regions):
        value, kind = region.get("value") or {}, region["type"]
        labels = value.get(kind) or []
        where = f"{export}: task {task.get('id')}, region {region.get('id', number)} ({kind} {labels})"
        if len(labels) != 1 or labels[0] not in table:
            raise DataError(f"{where}: needs one known label" + (" (see labels.txt)" if labels else ""))
        label = table[labels[0]]
        if kind == "brushlabels":
            mask[brush_mask(value, height, width, where)] = label
            continue
        scale = np.array([width / 100, height / 100])  # percent of the image -> pixels
        try:
            if kind == "polygonlabels":
                points = np.asarray(value.get("points"), np.float64).reshape(-1, 2) * scale
            else:
                x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
                corners = np.array([[0, 0], [w, 0], [w, h], [0, h]]) * scale
                angle = np.deg2rad(float(value.get("rotation") or 0))
                rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
                points = corners @ rotation.T + np.array([x, y]) * scale
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: coordinates are not numbers") from None
        fill_polygon(mask, check_points(points, height, width, where), label)
    return mask


def brush_mask(value: dict, height: int, width: int, where: str) -> np.ndarray:
    """The pixels of a `brushlabels` region: Label Studio's RLE of an RGBA image, painted where alpha > 0."""
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError:
        raise DataError(f"{where}: brush regions need the label-studio-converter package "
                        f"(pip install \"kseg[labelstudio]\")") from None
    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise DataError(f"{where}: brush region without an rle list")
    try:
        flat = np.asarray(decode_rle(value["rle"]), np.uint8)
    except Exception as error:  # a corrupt bit stream fails anywhere inside the decoder
        raise DataError(f"{where}: cannot decode its brush RLE ({error})") from None
    if flat.size != height * width * 4:
        raise DataError(f"{where}: brush RLE holds {flat.size} values, not {height}x{width}x4")
    return flat.reshape(height, width, 4)[..., 3] > 0
