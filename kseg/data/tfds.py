"""TensorFlow Datasets segmentation sources.

    pets = kseg.data.tfds("oxford_iiit_pet", split="train", data_dir="~/tensorflow_datasets")

Known datasets map their mask values to kseg classes (everything unmapped becomes 255, ignored).
Other TFDS datasets work given `image_key`, `mask_key` and `num_classes`.
"""

import contextlib
import dataclasses

import numpy as np

from kseg.data.source import Split
from kseg.errors import DataError, first_line


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    image_key: str
    mask_key: str
    class_names: tuple
    label_map: dict | None  # mask value -> class; None keeps values as they are


KNOWN = {
    # Trimaps: 1 pet, 2 background, 3 border (the unsure outline is kept as a class, as in the Keras tutorial).
    "oxford_iiit_pet": TfdsSpec("image", "segmentation_mask", ("background", "pet", "border"), {1: 1, 2: 0, 3: 2}),
}


def from_tfds(name: str, split: str = "train", data_dir: str | None = None, download: bool = False,
              manual_dir: str | None = None, image_key: str | None = None, mask_key: str | None = None,
              num_classes: int | None = None) -> Split:
    """A `Split` from TensorFlow Datasets; prepared data under `data_dir` is used as is.

    `download=True` downloads and prepares it first (needs a network; `manual_dir` holds manually
    downloaded archives for datasets that require them).
    """
    import tensorflow as tf
    import tensorflow_datasets

    spec = KNOWN.get(name)
    if spec is None:
        if not (image_key and mask_key and num_classes):
            raise DataError(f"tfds:{name}: unknown to kseg; pass image_key, mask_key and num_classes")
        spec = TfdsSpec(image_key, mask_key, tuple(f"class_{i}" for i in range(num_classes)), None)
    try:
        builder = tensorflow_datasets.builder(name, data_dir=data_dir)
        if download:
            config = tensorflow_datasets.download.DownloadConfig(manual_dir=manual_dir)
            builder.download_and_prepare(download_config=config)
        dataset = builder.as_dataset(split=split)
        length = None
        with contextlib.suppress(KeyError, ValueError, TypeError):  # the count is a hint, not a need
            length = int(builder.info.splits[split].num_examples) or None
    except Exception as error:  # TFDS raises many types; the user needs one line
        hint = "" if download else (" (prepare it first, or pass download=True / --download where a network"
                                    " is available)")
        raise DataError(f"tfds:{name} split {split!r}: {first_line(error)}{hint}") from error

    table = np.full(256, 255, np.uint8)
    if spec.label_map is None:
        table[: len(spec.class_names)] = np.arange(len(spec.class_names))
    else:
        for value, label in spec.label_map.items():
            table[value] = label
    table = tf.constant(table)

    def convert(example):
        image = example[spec.image_key]
        if image.shape.rank == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        mask = example[spec.mask_key]
        if mask.shape.rank == 2:
            mask = mask[..., None]
        # Guard against masks stored at another size than their image (nearest keeps labels intact).
        mask = tf.image.resize(mask, tf.shape(image)[:2], method="nearest")[..., 0]
        return tf.cast(image, tf.uint8), tf.gather(table, tf.cast(mask, tf.int32))

    examples = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return Split(examples, len(spec.class_names), list(spec.class_names), length, f"tfds:{name}[{split}]")
