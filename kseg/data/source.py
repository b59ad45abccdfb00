"""The common shape of every data source, and `load`, which picks one from a short spec."""

import dataclasses
import os

import tensorflow as tf

from kseg.errors import DataError

IGNORE_LABEL = 255


@dataclasses.dataclass
class Split:
    """One split of a dataset: examples (image uint8 (H, W, 3), mask uint8 (H, W)) plus what describes them."""

    examples: tf.data.Dataset
    num_classes: int
    class_names: list
    length: int | None = None
    description: str = ""
    image_size: tuple | None = None  # (height, width) when every image has it

    def __len__(self):
        if self.length is None:
            raise TypeError(f"{self.description or 'this split'} has no known length")
        return self.length


def load(spec, split="train", num_classes=None, **options):
    """A split from a spec: "synthetic", "tfds:NAME" or a folder path.

    A folder may hold `images/` and `masks/` directly, or one such pair per split (`DIR/train`, `DIR/val`).
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
    root = split_dir if os.path.isdir(split_dir) else spec
    return folder.from_folder(root, num_classes=num_classes, **options)
