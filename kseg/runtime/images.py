"""Pictures as models take them: RGB pixels (H, W, 3) in [0, 255], from a path, a PIL image or an array.

    pixels = kseg.runtime.images.read("photo.jpg")        # uint8 (H, W, 3), upright (EXIF orientation applied)
    kseg.runtime.images.pixels(np.zeros((48, 64), np.uint16))   # grey 16-bit -> uint8 RGB
    kseg.runtime.images.in_folder("frames/")                   # sorted image paths

Grey becomes RGB, alpha is dropped and 16-bit values keep their top 8 bits (value >> 8), as TensorFlow's
decoder that reads training folders does (`tf.io.decode_image(..., channels=3, dtype=tf.uint8)`), so a
picture reaches the model as training pictures did. EXIF orientation is applied (a phone's portrait photo is
stored sideways), which training's decoder does not do.
"""

import os

import numpy as np
from PIL import Image, ImageOps

from kseg.errors import ArgumentError, DataError, first_line

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read(path: str) -> np.ndarray:
    """uint8 RGB pixels of the image file at `path`; a DataError naming it if it cannot be decoded."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return from_pil(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode image ({first_line(error)})") from error


def from_pil(image: Image.Image) -> np.ndarray:
    """uint8 RGB pixels of a PIL image, turned upright by its EXIF orientation."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return pixels(np.asarray(image))
    return np.asarray(image.convert("RGB"))


def pixels(image) -> np.ndarray:
    """(H, W, 3) RGB pixels of a path, a PIL image or an array: (H, W) or (H, W, 1) grey, (H, W, 3) RGB or
    (H, W, 4) RGBA. uint8 and float arrays (taken as [0, 255]) keep their type; wider integers are read
    as 16-bit and become uint8 (value >> 8)."""
    if isinstance(image, (str, os.PathLike)):
        return read(os.fspath(image))
    if isinstance(image, Image.Image):
        return from_pil(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3]
    elif array.ndim != 2:
        raise ArgumentError(f"expected an image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        array = (np.clip(array, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    if array.ndim == 2 or array.shape[-1] == 1:
        array = np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=-1)
    return array


def in_folder(folder: str) -> list:
    """Sorted paths of the image files (by extension) directly in `folder`."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(EXTENSIONS) and not name.startswith("."))
