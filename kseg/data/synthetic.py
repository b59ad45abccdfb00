"""The embedded synthetic dataset: textured shapes on shaded, noisy backgrounds crossed by lines.

Deterministic by seed, generated in memory in about a second, so everything in kseg runs offline.
Five object classes (disc, square, triangle, ring, cross) plus background. Hard but learnable: colour
carries no class information (every object takes random colours), each class prefers a texture but often
wears another, sizes and rotations vary, and thin lines (background) cross the scene. Every label is
decidable from the image: only shape tells the classes apart, objects do not overlap (an occluded shape
could be anything), and nothing in the background looks like an object.

    images, masks = kseg.data.generate(8, size=(128, 128), seed=0)
"""

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kseg.data.source import Split

from kseg.errors import DataError

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "cross")
_TEXTURES = ("solid", "stripes", "checker", "solid", "dots")  # preferred texture per object class
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 480, "val": 96, "test": 96}


def _shape(kind, u, v, radius):
    distance = np.hypot(u, v)
    if kind == 1:
        return distance <= radius
    if kind == 2:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if kind == 3:
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        return np.all([u * nx + v * ny <= 0.5 * radius for nx, ny in normals], axis=0)
    if kind == 4:
        return (distance <= radius) & (distance >= 0.55 * radius)
    if kind == 5:
        bar = 0.3 * radius
        return ((np.abs(u) <= bar) & (np.abs(v) <= radius)) | ((np.abs(v) <= bar) & (np.abs(u) <= radius))
    raise ValueError(kind)


def _texture(name, u, v, rng):
    period = rng.uniform(4, 9)
    if name == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0)[..., None]
    if name == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2 == 0)[..., None]
    if name == "dots":
        return ((np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)) > 0.4)[..., None]
    return np.zeros(u.shape + (1,), bool)


def _render(rng, height, width):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width)
    # Background: a smooth random gradient with low-frequency blotches.
    corners = rng.uniform(0, 255, (2, 2, 3))
    fy, fx = (yy / height)[..., None], (xx / width)[..., None]
    image = corners[0, 0] * (1 - fy) * (1 - fx) + corners[0, 1] * (1 - fy) * fx
    image = image + corners[1, 0] * fy * (1 - fx) + corners[1, 1] * fy * fx
    for _ in range(3):
        cy, cx, s = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.1, 0.4) * scale
        image = image + rng.uniform(-40, 40, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    mask = np.zeros((height, width), np.uint8)

    # Thin lines (background) first, then objects where they do not touch earlier ones.
    for _ in range(int(rng.integers(2, 6))):
        u, v = _frame(rng, yy, xx, height, width)
        region = (np.abs(v) <= rng.uniform(0.5, 1.5)) & (np.abs(u) <= rng.uniform(0.2, 0.6) * scale)
        image = np.where(region[..., None], rng.uniform(0, 255, 3), image)
    taken = np.zeros((height, width), bool)
    for kind in rng.integers(1, len(CLASS_NAMES), rng.integers(2, 6)):
        for _attempt in range(10):
            radius = rng.uniform(0.12, 0.26) * scale
            u, v = _frame(rng, yy, xx, height, width, margin=0.6 * radius)  # mostly inside: shape stays visible
            region = _shape(kind, u, v, radius)
            margin = _shape(1, u, v, 0.3 * scale) if kind == 4 else region  # a ring's hole stays free
            if region.any() and not (margin & taken).any():
                break
        else:
            continue
        taken |= _dilate(region, 3)
        colors = rng.uniform(0, 255, (2, 3))
        texture = _TEXTURES[kind - 1] if rng.random() < 0.6 else _TEXTURES[rng.integers(len(_TEXTURES))]
        pattern = _texture(texture, u, v, rng)
        image = np.where(region[..., None], np.where(pattern, colors[1], colors[0]), image)
        mask[region] = kind
    image = image + rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _frame(rng, yy, xx, height, width, margin=0.0):
    """Coordinates (u, v) around a random centre at least `margin` pixels inside, rotated by a random angle."""
    cy, cx = rng.uniform(margin, height - margin), rng.uniform(margin, width - margin)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)


def _dilate(region, pixels):
    grown = region.copy()
    for axis in (0, 1):
        for shift in range(1, pixels + 1):
            grown |= np.roll(region, shift, axis) | np.roll(region, -shift, axis)
    return grown


def generate(num_images: int, size: tuple[int, int] = (128, 128), seed: int = 0,
             split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), masks uint8 (N, H, W)); image i depends only on (seed, split, i)."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise DataError(f"the synthetic data needs a positive number of images (num-images), got {num_images!r}")
    if len(size) != 2 or min(size) < 8:
        raise DataError(f"synthetic images must be at least 8x8 pixels, got {size!r}")
    height, width = size
    images = np.empty((num_images, height, width, 3), np.uint8)
    masks = np.empty((num_images, height, width), np.uint8)
    for i in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_SEEDS[split], i])
        images[i], masks[i] = _render(rng, height, width)
    return images, masks


def from_synthetic(split: str = "train", num_images: int | None = None, size: tuple[int, int] = (128, 128),
                   seed: int = 0) -> "Split":
    """The synthetic dataset as a `Split` (train: 480 images, val and test: 96 each, by default)."""
    import tensorflow as tf

    from kseg.data.source import DataStats, Split

    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
    num_images = DEFAULT_LENGTHS[split] if num_images is None else num_images
    images, masks = generate(num_images, (size[0], size[1]), seed, split)
    examples = tf.data.Dataset.from_tensor_slices((images, masks))
    description = f"synthetic {split} ({num_images} images, {size[0]}x{size[1]}, seed {seed})"
    stats = DataStats({tuple(size): num_images}, np.bincount(masks.reshape(-1), minlength=len(CLASS_NAMES)))
    return Split(examples, len(CLASS_NAMES), list(CLASS_NAMES), num_images, description, tuple(size), stats,
                 in_memory=True)


def write_folder(out_dir: str, num_images: int = 32, size: tuple[int, int] = (128, 128), seed: int = 0,
                 split: str = "train") -> str:
    """Writes the synthetic images (PNG) and palette masks (PNG) as `out_dir/images` and `out_dir/masks`."""
    from PIL import Image

    from kseg.viz import palette

    images, masks = generate(num_images, size, seed, split)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    flat_palette = palette(256).reshape(-1).tolist()
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(os.path.join(out_dir, "images", f"{split}_{i:05d}.png"))
        label_image = Image.fromarray(mask, mode="P")
        label_image.putpalette(flat_palette)
        label_image.save(os.path.join(out_dir, "masks", f"{split}_{i:05d}.png"))
    return out_dir
