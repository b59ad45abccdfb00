"""Mask files as class indices: index and palette PNGs (their indices, not their colours), 16-bit index
images, grey RGB files, and colour-coded RGB masks through a colour table {(r, g, b): class}.

    kseg.data.read_mask("masks/0001.png")                       # uint8 (H, W) class indices
    kseg.data.read_mask("masks/0001.png", colors={(0, 0, 0): 0, (255, 0, 0): 1})
"""

import numpy as np
from PIL import Image

from kseg import IGNORE_LABEL
from kseg.errors import DataError


def read_mask(path: str, colors: dict | None = None, binary_255: bool = False) -> np.ndarray:
    """Class indices (uint8, (H, W)) of a mask file; palette masks give their indices, not colours.

    `colors` maps (r, g, b) to a class, for colour-coded RGB masks; `binary_255` reads 255 as class 1
    (black-and-white masks). Raises DataError naming the file.
    """
    labels = _read_mask(path, colors)
    if binary_255:
        labels = np.where(labels == IGNORE_LABEL, 1, labels).astype(np.uint8)
    return labels


def _read_mask(path, colors):
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: cannot decode mask ({error})") from None
    if mode in ("P", "L", "1"):
        return array.astype(np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L"):
        if array.max(initial=0) > 255 or array.min(initial=0) < 0:
            raise DataError(f"{path}: label {array.max()} does not fit 0-255 (255 means ignore)")
        return array.astype(np.uint8)
    if mode == "LA":
        return array[..., 0].astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = array[..., :3].astype(np.uint32)
        if colors is None:
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                return array[..., 0].astype(np.uint8)  # a grey RGB file: indices stored three times
            raise DataError(
                f"{path}: an RGB colour mask; pass a colour table (colors=, --colors) or save masks as index PNGs"
            )
        return _colors_to_labels(path, rgb, colors)
    raise DataError(f"{path}: unsupported mask mode {mode} (expected an index, palette or RGB PNG)")


def _colors_to_labels(path, rgb, colors):
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(int(r) << 16) | (int(g) << 8) | int(b): int(label) for (r, g, b), label in colors.items()}
    known = np.array(sorted(table), dtype=np.uint32)
    labels = np.array([table[k] for k in known], dtype=np.uint8)
    index = np.clip(np.searchsorted(known, keys), 0, len(known) - 1)
    unknown = known[index] != keys
    if unknown.any():
        key = int(keys[unknown][0])
        colour = (key >> 16, (key >> 8) & 255, key & 255)
        raise DataError(f"{path}: colour {colour} is not in the colour table ({int(unknown.sum())} pixels)")
    return labels[index]
