"""`load`: a data split from a short spec ("synthetic", "tfds:NAME" or a folder), whichever source it names."""

import os

from kseg.data import folder, shards, synthetic, tfds
from kseg.errors import DataError


def load(spec, split="train", num_classes=None, **options):
    """A split from a spec: "synthetic", "tfds:NAME", a folder path, or a folder of shards (`kseg data pack`).

    A folder may hold `images/` and `masks/` directly, or one such pair per split (`DIR/train`, `DIR/val`).
    A folder without a `val/` split gives "train" and "val" from one set of pairs: a fifth of them
    (chosen by file name) validates, the rest trains; other split names give every pair.
    """
    if spec == "synthetic":
        if split == "val" and "num_images" in options:  # keep the validation split a quarter of training
            options = {**options, "num_images": max(options["num_images"] // 4, 1)}
        return synthetic.from_synthetic(split, **options)
    if spec.startswith("tfds:"):
        return tfds.from_tfds(spec[len("tfds:"):], split=split, num_classes=num_classes, **options)
    if not os.path.isdir(spec):
        raise DataError(f"{spec}: no such folder (a data spec is a folder, 'synthetic' or 'tfds:NAME')")
    if shards.is_packed(spec):
        return shards.from_shards(spec, split, num_classes=num_classes)
    split_dir = os.path.join(spec, split)
    if os.path.isdir(split_dir):
        return folder.from_folder(split_dir, num_classes=num_classes, **options)
    subset = split if split in ("train", "val") and not os.path.isdir(os.path.join(spec, "val")) else None
    return folder.from_folder(spec, num_classes=num_classes, subset=subset, **options)
