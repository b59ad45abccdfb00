"""Data for kseg: folders of images and masks, annotation formats (COCO, Cityscapes, ADE20K, VOC + SBD, labelme,
CVAT, Label Studio: `kseg.data.formats`), TensorFlow Datasets, the embedded synthetic set, and the `tf.data`
pipeline that decodes, augments and batches them.

    train = kseg.data.load("synthetic", "train")            # or a folder, an annotation file, "tfds:oxford_iiit_pet"
    batches = kseg.data.pipeline(train, batch_size=8, size=(128, 128), training=True)

Every source yields (image uint8 (H, W, 3), mask uint8 (H, W)) examples; masks hold class indices
and 255 marks pixels to ignore. Batches hold float32 pixels in [0, 255]: models normalise inside.
"""

from kseg.data.folder import DataReport, from_folder
from kseg.data.loading import check, load
from kseg.data.masks import read_mask
from kseg.data.pipeline import pipeline
from kseg.data.source import IGNORE_LABEL, DataStats, Split
from kseg.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from kseg.data.synthetic import from_synthetic, generate, write_folder
from kseg.data.tfds import from_tfds

__all__ = [
    "IGNORE_LABEL",
    "SYNTHETIC_CLASSES",
    "DataReport",
    "DataStats",
    "Split",
    "check",
    "from_folder",
    "from_synthetic",
    "from_tfds",
    "generate",
    "load",
    "pipeline",
    "read_mask",
    "write_folder",
]
