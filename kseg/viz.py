"""Pictures: the PASCAL VOC colour palette, label PNGs, colour overlays and side-by-side panels."""

import numpy as np
from PIL import Image


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC palette (bit-interleaved class index), as uint8 (num_colors, 3); 255 is cream-white."""
    colors = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    if num_colors > 255:
        colors[255] = (224, 224, 192)
    return colors


def label_image(labels: np.ndarray) -> Image.Image:
    """A palette PNG-ready PIL image of a (H, W) label map: viewers show colours, readers get indices."""
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    image.putpalette(palette(256).reshape(-1).tolist())
    return image


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colours."""
    return palette(256)[np.asarray(labels, np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blends label colours over an RGB image; background (0) and ignored (255) pixels stay as they are."""
    image = np.asarray(image, np.float32)
    labels = np.asarray(labels)
    colors = colorize(labels).astype(np.float32)
    blend = np.where(((labels > 0) & (labels < 255))[..., None], (1 - alpha) * image + alpha * colors, image)
    return np.clip(blend, 0, 255).astype(np.uint8)


def panel(image: np.ndarray, *label_maps: np.ndarray) -> np.ndarray:
    """Image | an overlay of each label map (ground truth, predictions...), side by side with 4-pixel gaps."""
    image = np.asarray(image, np.uint8)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    parts = [image]
    for labels in label_maps:
        parts += [gap, overlay(image, labels)]
    return np.concatenate(parts, axis=1)
