"""The common shape of every data source (`Split`, `DataStats`) and the ignore label: plain data, no TensorFlow,
so every source and the pipeline can share them without importing each other (`kseg.data.loading.load`
picks a source from a short spec)."""

import dataclasses
from typing import TYPE_CHECKING

from kseg import IGNORE_LABEL  # noqa: F401  (re-exported: kseg.data.IGNORE_LABEL)

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf



@dataclasses.dataclass
class DataStats:
    """What a source knows about its images and labels without another pass: what training defaults use."""

    sizes: dict  # (height, width) -> number of images
    class_pixels: "np.ndarray"  # pixels per class (ignored pixels not counted)
    grey: bool = False  # single-channel images (microscopy, X-ray...)


@dataclasses.dataclass
class Split:
    """One split of a dataset: examples (image uint8 (H, W, 3), mask uint8 (H, W)) plus what describes them."""

    examples: "tf.data.Dataset"
    num_classes: int
    class_names: list
    length: int | None = None
    description: str = ""
    image_size: tuple | None = None  # (height, width) when every image has it
    stats: DataStats | None = None
    in_memory: bool = False  # examples are decoded tensors already: caching them again would double memory

    def __len__(self):
        if self.length is None:
            raise TypeError(f"{self.description or 'this split'} has no known length")
        return self.length
