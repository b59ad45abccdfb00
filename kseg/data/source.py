"""The common shape of every data source, and `load`, which picks one from a short spec."""

import dataclasses
import os

import tensorflow as tf

from kseg.errors import DataError

IGNORE_LABEL = 255


@dataclasses.dataclass
class DataStats:
    """What a source knows about its images and labels without another pass: what training defaults use."""

    sizes: dict  # (height, width) -> number of images
    class_pixels: "np.ndarray"  # pixels per class (ignored pixels not counted)
    grey: bool = False  # single-channel images (microscopy, X-ray...)


@dataclasses.dataclass
class Split:
    """One split of a dataset: examples (image uint8 (H, W, 3), mask uint8 (H, W)) plus what describes them."""

    examples: tf.data.Dataset
    num_classes: int
    class_names: list
    length: int | None = None
    description: str = ""
    image_size: tuple | None = None  # (height, width) when every image has it
    stats: DataStats | None = None

    def __len__(self):
        if self.length is None:
            raise TypeError(f"{self.description or 'this split'} has no known length")
        return self.length


def load(spec, split="train", num_classes=None, **options):
    """A split from a spec: "synthetic", "tfds:NAME" or a folder path.

    A folder may hold `images/` and `masks/` directly, or one such pair per split (`DIR/train`, `DIR/val`).
    A folder without a `val/` split gives "train" and "val" from one set of pairs: a fifth of them
    (chosen by file name) validates, the rest trains; other split names give every pair.
    """
    from kseg.data import folder, synthetic, tfds

    if spec == "synthetic":
        if split == "val" and "num_images" in options:  # keep the validation split a quarter of training
            options = {**options, "num_images": max(options["num_images"] // 4, 1)}
        return synthetic.from_synthetic(split, **options)
    if spec.startswith("tfds:"):
        return tfds.from_tfds(spec[len("tfds:"):], split=split, num_classes=num_classes, **options)
    if not os.path.isdir(spec):
        raise DataError(f"{spec}: no such folder (a data spec is a folder, 'synthetic' or 'tfds:NAME')")
    split_dir = os.path.join(spec, split)
    if os.path.isdir(split_dir):
        return folder.from_folder(split_dir, num_classes=num_classes, **options)
    subset = split if split in ("train", "val") and not os.path.isdir(os.path.join(spec, "val")) else None
    return folder.from_folder(spec, num_classes=num_classes, subset=subset, **options)
