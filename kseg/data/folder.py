"""Folders of images and masks, paired by file stem, checked before training touches them.

Layouts: `DIR/images` + `DIR/masks`, or PASCAL VOC's `DIR/JPEGImages` + `DIR/SegmentationClass`.
Images: PNG, JPEG or BMP (grey, RGB or RGBA; all become RGB). Masks: PNG (or BMP) holding class
indices: single-channel index images, palette images (VOC; decoded to their indices, not colours),
or RGB colour-coded masks with a `colors` table {(r, g, b): class}. 255 means "ignore".
Masks holding only 0 and 255 are read as binary (255 = foreground, class 1), the way black-and-white
mask files are usually meant. Class names come from `classes.txt` (one per line) in the folder or its
parent, when there is one. Hidden files and other stray files (`.DS_Store`, `Thumbs.db`, a README,
`.npy` side files) are skipped with a note, not treated as errors.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import sys

import numpy as np
from PIL import Image

from kseg import IGNORE_LABEL
from kseg.data.cache import FolderCheckCache
from kseg.data.masks import read_mask
from kseg.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MASK_EXTENSIONS = (".png", ".bmp")
LAYOUTS = (("images", "masks"), ("JPEGImages", "SegmentationClass"))
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
HOLDOUT = 0.2  # share of a folder without a val/ split that validates (chosen by file name, stably)
IN_MEMORY_BYTES = 1 << 30  # folders whose decoded pixels fit are decoded once, up front


def find_layout(root):
    """(images_dir, masks_dir) under `root`, or a DataError that says what was expected."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    for images, masks in LAYOUTS:
        pair = os.path.join(root, images), os.path.join(root, masks)
        if os.path.isdir(pair[0]) and os.path.isdir(pair[1]):
            return pair
    raise DataError(f"{root}: expected subfolders images/ and masks/ (or VOC's JPEGImages/ and SegmentationClass/)")


def _files_by_stem(directory, extensions, problems, skipped):
    """{stem: path} of the files with `extensions`; hidden and other files go to `skipped` with the reason."""
    files = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if name.startswith("."):
            skipped.append(f"{path}: hidden file")
        elif ext.lower() not in extensions:
            skipped.append(f"{path}: not a {'/'.join(e[1:] for e in extensions)} file")
        elif stem in files:
            problems.append(f"{path}: same name as {files[stem]} (pairs are matched by name)")
        else:
            files[stem] = path
    return files


def _image_size(path):
    """((height, width), grey?) of an image after checking that it decodes (JPEG at 1/8 scale: fast, complete)."""
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            image.draft(mode if mode in ("L", "RGB") else "RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode image ({error})") from None
    return (size[1], size[0]), mode in GREY_MODES


@dataclasses.dataclass
class DataReport:
    """What `check` found: the pairs, their sizes, the class histogram, and every problem."""

    root: str
    pairs: list  # [(image_path, mask_path)]
    sizes: collections.Counter  # (height, width) -> count
    histogram: np.ndarray  # pixels per label value, 256 entries (index 255: ignored)
    problems: list
    num_classes: int
    skipped: list = dataclasses.field(default_factory=list)  # "path: why" for stray files left out
    grey: bool = False  # every image is single-channel (microscopy, X-ray...)
    binary_255: bool = False  # masks hold only 0 and 255: read 255 as foreground (class 1)

    def raise_first(self):
        if self.problems:
            more = len(self.problems) - 1
            suffix = f" (and {more} more problem{'s' * (more > 1)}; run: kseg data check {self.root})" if more else ""
            raise DataError(self.problems[0] + suffix)


def check(root, num_classes=None, colors=None, workers=4, use_cache=True):
    """Scans a folder dataset: pairs by stem, decodes every file, checks sizes and label ranges.

    Never raises for bad files; returns a DataReport listing each problem as "path: what is wrong".
    A pair found good before, whose two files kept their sizes and modification times, is not decoded
    again (`kseg.data.cache`; `use_cache=False` checks everything).
    """
    images_dir, masks_dir = find_layout(root)
    problems, skipped = [], []
    if not os.listdir(images_dir):
        problems.append(f"{images_dir}: empty folder (no images)")
    images = _files_by_stem(images_dir, IMAGE_EXTENSIONS, problems, skipped)
    masks = _files_by_stem(masks_dir, MASK_EXTENSIONS, problems, skipped)
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[stem]}: no mask (expected {os.path.join(masks_dir, stem)}.png)")
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[stem]}: mask without an image")
    pairs = [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    if not pairs and not problems:
        problems.append(f"{images_dir}: empty folder (no image/mask pairs)")

    cache = FolderCheckCache(root, colors) if use_cache else None

    found = {}  # pair -> (size, grey, counts, problem): cached ones first, in this thread (no decoding)
    if cache:
        for pair in pairs:
            known = cache.get(pair)
            if known:
                found[pair] = (*known, None)

    def inspect(pair):
        image_path, mask_path = pair
        try:
            size, grey = _image_size(image_path)
            mask = read_mask(mask_path, colors)
        except DataError as error:
            return None, None, None, str(error)
        if mask.shape != size:
            return size, grey, None, (
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {os.path.basename(image_path)} "
                f"is {size[1]}x{size[0]} (width x height)"
            )
        counts = np.bincount(mask.reshape(-1), minlength=256)
        if cache:
            cache.put(pair, size, grey, counts)
        return size, grey, counts, None

    sizes, histogram, per_pair, all_grey = collections.Counter(), np.zeros(256, np.int64), [], bool(pairs)
    unknown = [pair for pair in pairs if pair not in found]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        found.update(zip(unknown, pool.map(inspect, unknown)))
    for pair in pairs:
        size, grey, counts, problem = found[pair]
        per_pair.append((pair, counts))
        if problem:
            problems.append(problem)
            continue
        sizes[size] += 1
        histogram += counts
        all_grey = all_grey and grey
    if cache:
        cache.save()
    binary_255 = histogram[IGNORE_LABEL] > 0 and not histogram[1:IGNORE_LABEL].any() and colors is None
    if binary_255:
        histogram[1], histogram[IGNORE_LABEL] = histogram[IGNORE_LABEL], 0
        per_pair = [(pair, None if c is None else np.concatenate([c[:1], c[255:], c[2:255], [0]]))
                    for pair, c in per_pair]
    used = np.flatnonzero(histogram[:IGNORE_LABEL])
    inferred = int(used.max()) + 1 if used.size else 0
    if num_classes is None:
        num_classes = inferred
    else:
        for (_, mask_path), counts in per_pair:
            if counts is None:
                continue
            bad = np.flatnonzero(counts[num_classes:IGNORE_LABEL])
            if bad.size:
                label = int(bad[0]) + num_classes
                problems.append(
                    f"{mask_path}: label {label} out of range for {num_classes} classes "
                    f"({int(counts[label])} pixels; 255 is the ignore label)"
                )
    good = [pair for pair, counts in per_pair if counts is not None]
    return DataReport(root, good, sizes, histogram, problems, num_classes, skipped, all_grey, bool(binary_255))


def names_of(root, report):
    """The class names of a checked folder: its `classes.txt`, else generic names for the class count."""
    return _class_names_file(root) or _default_names(report)


def _class_names_file(root):
    """Class names from `classes.txt` (one per line, in label order) in the folder or its parent."""
    for directory in (root, os.path.dirname(os.path.abspath(root))):
        path = os.path.join(directory, "classes.txt")
        if os.path.exists(path):
            with open(path) as f:
                return [line.strip() for line in f if line.strip()]
    return None


def holdout(pairs, share=HOLDOUT):
    """Indices of the pairs that validate when a folder has no val/ split: `share` of them (at least one,
    never all), ranked by a hash of the file name, so the choice does not depend on listing order."""
    if len(pairs) < 2:
        return set()
    wanted = min(max(1, round(share * len(pairs))), len(pairs) - 1)
    rank = sorted(range(len(pairs)), key=lambda i: hashlib.sha1(os.path.basename(pairs[i][0]).encode()).digest())
    return set(rank[:wanted])


def note(message):
    """A one-line note on stderr: something kseg decided for the user that they should know about."""
    print(f"kseg: note: {message}", file=sys.stderr, flush=True)


def from_folder(root, num_classes=None, class_names=None, colors=None, subset=None):
    """A Split from a folder dataset, after `check`: any problem raises a DataError naming the file.

    `subset` "train" or "val" splits a folder that has no val/ folder: about a fifth of the pairs
    (chosen by file name) validate, the rest train; None keeps every pair.
    """
    from kseg.data.source import DataStats, Split

    report = check(root, num_classes=num_classes, colors=colors)
    report.raise_first()
    if report.skipped:
        more = f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else ""
        note(f"skipped {report.skipped[0]}{more} (kseg data check {root} lists them)")
    if report.binary_255:
        note(f"{root}: masks hold only 0 and 255; reading 255 as the foreground class 1, not as ignore")
    pairs = report.pairs
    description = root
    if subset is not None:
        held = holdout(pairs)
        pairs = [pair for i, pair in enumerate(pairs) if (i in held) == (subset == "val")] if held else pairs
        description = f"{root} [{subset}: {len(pairs)} of {len(report.pairs)} pairs, held out by file name]"
    decoded_bytes = sum(4 * height * width * count for (height, width), count in report.sizes.items())
    if decoded_bytes <= IN_MEMORY_BYTES:
        examples = _decoded(pairs, colors, report.binary_255)
    else:
        examples = _streamed(pairs, colors, report.binary_255)
    names = list(class_names or names_of(root, report))
    image_size = next(iter(report.sizes)) if len(report.sizes) == 1 else None
    stats = DataStats(report.sizes, report.histogram[: report.num_classes].copy(), report.grey)
    return Split(examples, report.num_classes, names, len(pairs), description, image_size, stats,
                 in_memory=decoded_bytes <= IN_MEMORY_BYTES)


def _decoded(pairs, colors, binary_255):
    """Examples decoded now, in threads, held as tensors: no decoding per epoch, and no Python function inside
    the tf.data graph (whose in-flight calls can stall the deletion of an iterator, and the process's exit)."""
    import tensorflow as tf

    def read(pair):
        image_path, mask_path = pair
        try:  # TensorFlow's decoder, as the streamed path: 16-bit images scale to 8 bits the same way
            image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, dtype=tf.uint8,
                                       expand_animations=False).numpy()
        except tf.errors.OpError as error:
            raise DataError(f"{image_path}: cannot decode image ({error.message.splitlines()[0]})") from None
        return image, read_mask(mask_path, colors, binary_255)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        images, masks = zip(*pool.map(read, pairs)) if pairs else ((), ())
    if len({image.shape for image in images}) <= 1:
        return tf.data.Dataset.from_tensor_slices((np.stack(images), np.stack(masks)))
    ragged = tf.ragged.stack([tf.constant(i) for i in images]), tf.ragged.stack([tf.constant(m) for m in masks])
    return tf.data.Dataset.from_tensor_slices(ragged).map(lambda i, m: (i.to_tensor(), m.to_tensor()))


def _streamed(pairs, colors, binary_255):
    """Examples read and decoded as the pipeline asks for them (large datasets)."""
    import tensorflow as tf

    def decode(image_path, mask_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, dtype=tf.uint8, expand_animations=False)
        mask = tf.numpy_function(
            lambda p: read_mask(p.decode(), colors, binary_255), [mask_path], tf.uint8, stateful=False
        )
        return image, tf.ensure_shape(mask, [None, None])

    paths = ([image for image, _ in pairs], [mask for _, mask in pairs])
    return tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _default_names(report):
    if report.num_classes == 2:
        return ["background", "foreground"]
    return [f"class_{i}" for i in range(report.num_classes)]
