"""Checked (image, annotation) pairs and the `Split` made of them: the engine that folders (`kseg.data.folder`)
and every annotation format (`kseg.data.formats`) share.

A source lists its pairs (two file paths: the image and the file its mask is read from) and says how to read a
pair's mask (`read_label(pair) -> uint8 (H, W)`, raising a DataError that names the file); `check_pairs` decodes
every image and mask once (or reads what a check found before from `kseg.data.cache`), lists every problem as
"path: what is wrong", and `to_split` makes the `Split` (decoded up front when it fits in memory, else streamed).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable

import numpy as np
from PIL import Image

from kseg import IGNORE_LABEL
from kseg.data.source import DataStats, Split
from kseg.errors import DataError

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
HOLDOUT = 0.2  # share of a set without a val split that validates (chosen by file name, stably)
IN_MEMORY_BYTES = 1 << 30  # sets whose decoded pixels fit are decoded once, up front


def image_size(path: str) -> tuple[tuple[int, int], bool]:
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
    """What a check found: the pairs, their sizes, the class histogram, and every problem."""

    root: str
    pairs: list  # [(image_path, mask_path)]
    sizes: collections.Counter  # (height, width) -> count
    histogram: np.ndarray  # pixels per label value, 256 entries (index 255: ignored)
    problems: list
    num_classes: int
    skipped: list = dataclasses.field(default_factory=list)  # "path: why" for stray files left out
    grey: bool = False  # every image is single-channel (microscopy, X-ray...)
    binary_255: bool = False  # masks hold only 0 and 255: read 255 as foreground (class 1)
    read_label: Callable | None = None  # pair -> uint8 (H, W) labels as stored (before binary_255)
    read_image: Callable | None = None  # pair -> uint8 (H, W, 3), for images that are not files of their own
    class_names: list | None = None  # from the annotation format, when it names its classes
    format: str = "folder"

    def raise_first(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            suffix = f" (and {more} more problem{'s' * (more > 1)}; run: kseg data check {self.root})" if more else ""
            raise DataError(self.problems[0] + suffix)

    def read_mask(self, pair: tuple) -> np.ndarray:
        """The class indices of one of its pairs (255 read as class 1 for binary 0/255 masks)."""
        assert self.read_label is not None, "a report of pairs reads their labels"
        labels = self.read_label(pair)
        if self.binary_255:
            labels = np.where(labels == IGNORE_LABEL, 1, labels).astype(np.uint8)
        return labels

    def image_bytes(self, pair: tuple) -> bytes:
        """An encoded image file's bytes for a pair: the file itself, or its pixels as PNG."""
        if self.read_image is None:
            with open(pair[0], "rb") as f:
                return f.read()
        import io

        buffer = io.BytesIO()
        Image.fromarray(self.read_image(pair)).save(buffer, format="PNG")
        return buffer.getvalue()


def check_pairs(root: str, pairs: list, read_label: Callable, *, image_size_of: Callable | None = None,
                read_image: Callable | None = None, num_classes: int | None = None, problems: list | None = None,
                skipped: list | None = None, cache=None, workers: int = 4, detect_binary: bool = False,
                class_names: list | None = None, format: str = "folder") -> DataReport:
    """A DataReport of `pairs` after decoding every image and mask (pairs the cache knows are not decoded).

    `read_label(pair)` gives a pair's labels; `image_size_of(pair)` its image's ((height, width), grey) (default:
    the first path's file; `read_image` for images that are not files). `detect_binary`: masks holding only 0 and
    255 are read as binary (plain folders only). Never raises for bad files: each is a problem line.
    """
    problems, skipped = list(problems or []), list(skipped or [])
    if image_size_of is None:
        image_size_of = (lambda pair: ((read_image(pair).shape[:2]), False)) if read_image else \
            (lambda pair: image_size(pair[0]))
    found = {}  # pair -> (size, grey, counts, problem): cached ones first, in this thread (no decoding)
    if cache:
        for pair in pairs:
            known = cache.get(pair)
            if known:
                found[pair] = (*known, None)

    def inspect(pair):
        try:
            size, grey = image_size_of(pair)
            mask = read_label(pair)
        except DataError as error:
            return None, None, None, str(error)
        if mask.shape != size:
            return size, grey, None, (
                f"{pair[1]}: mask is {mask.shape[1]}x{mask.shape[0]} but image {os.path.basename(pair[0])} "
                f"is {size[1]}x{size[0]} (width x height)"
            )
        counts = np.bincount(mask.reshape(-1), minlength=256)
        if cache:
            cache.put(pair, size, grey, counts)
        return size, grey, counts, None

    sizes: collections.Counter = collections.Counter()
    histogram, per_pair, all_grey = np.zeros(256, np.int64), [], bool(pairs)
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
    binary_255 = detect_binary and histogram[IGNORE_LABEL] > 0 and not histogram[1:IGNORE_LABEL].any()
    if binary_255:
        histogram[1], histogram[IGNORE_LABEL] = histogram[IGNORE_LABEL], 0
        per_pair = [(pair, None if c is None else np.concatenate([c[:1], c[255:], c[2:255], [0]]))
                    for pair, c in per_pair]
    used = np.flatnonzero(histogram[:IGNORE_LABEL])
    inferred = int(used.max()) + 1 if used.size else 0
    if num_classes is None:
        num_classes = max(inferred, len(class_names or []))
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
    return DataReport(root, good, sizes, histogram, problems, num_classes, skipped, all_grey, bool(binary_255),
                      read_label, read_image, list(class_names) if class_names else None, format)


def holdout(pairs: list, share: float = HOLDOUT) -> set:
    """Indices of the pairs that validate when a set has no val split: `share` of them (at least one, never
    all), ranked by a hash of the file name, so the choice does not depend on listing order."""
    if len(pairs) < 2:
        return set()
    wanted = min(max(1, round(share * len(pairs))), len(pairs) - 1)
    rank = sorted(range(len(pairs)), key=lambda i: hashlib.sha1(os.path.basename(pairs[i][0]).encode()).digest())
    return set(rank[:wanted])


def note(message: str) -> None:
    """A one-line note on stderr: something kseg decided for the user that they should know about."""
    print(f"kseg: note: {message}", file=sys.stderr, flush=True)


def default_names(num_classes: int) -> list:
    if num_classes == 2:
        return ["background", "foreground"]
    return [f"class_{i}" for i in range(num_classes)]


def to_split(report: DataReport, subset: str | None = None, class_names=None, description: str | None = None) -> Split:
    """The `Split` of a checked report (call `report.raise_first()` first). `subset` "train" or "val" holds out
    about a fifth of the pairs (chosen by file name) to validate; None keeps every pair."""
    pairs = report.pairs
    description = description or report.root
    if subset is not None:
        held = holdout(pairs)
        pairs = [pair for i, pair in enumerate(pairs) if (i in held) == (subset == "val")] if held else pairs
        description = f"{description} [{subset}: {len(pairs)} of {len(report.pairs)} pairs, held out by file name]"
    decoded_bytes = sum(4 * height * width * count for (height, width), count in report.sizes.items())
    in_memory = decoded_bytes <= IN_MEMORY_BYTES
    examples = (_decoded if in_memory else _streamed)(pairs, report)
    names = list(class_names or report.class_names or default_names(report.num_classes))
    names += [f"class_{i}" for i in range(len(names), report.num_classes)]
    image_size = next(iter(report.sizes)) if len(report.sizes) == 1 else None
    stats = DataStats(report.sizes, report.histogram[: report.num_classes].copy(), report.grey)
    return Split(examples, report.num_classes, names, len(pairs), description, image_size, stats, in_memory=in_memory)


def decode_image_file(path: str) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an image file, decoded as the streamed pipeline decodes it; a DataError naming
    the file when it cannot be decoded."""
    import tensorflow as tf

    try:  # TensorFlow's decoder, as the streamed path: 16-bit images scale to 8 bits the same way
        return tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    except tf.errors.OpError as error:
        raise DataError(f"{path}: cannot decode image ({error.message.splitlines()[0]})") from None


def _decoded(pairs, report):
    """Examples decoded now, in threads, held as tensors: no decoding per epoch, and no Python function inside
    the tf.data graph (whose in-flight calls can stall the deletion of an iterator, and the process's exit)."""
    import tensorflow as tf

    def read(pair):
        image = report.read_image(pair) if report.read_image else decode_image_file(pair[0])
        return image, report.read_mask(pair)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        images, masks = zip(*pool.map(read, pairs)) if pairs else ((), ())
    if len({image.shape for image in images}) <= 1:
        return tf.data.Dataset.from_tensor_slices((np.stack(images), np.stack(masks)))
    ragged = tf.ragged.stack([tf.constant(i) for i in images]), tf.ragged.stack([tf.constant(m) for m in masks])
    return tf.data.Dataset.from_tensor_slices(ragged).map(lambda i, m: (i.to_tensor(), m.to_tensor()))


def _streamed(pairs, report):
    """Examples read and decoded as the pipeline asks for them (large datasets)."""
    import tensorflow as tf

    def decode(image_path, mask_path):
        if report.read_image is None:
            image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, dtype=tf.uint8,
                                       expand_animations=False)
        else:
            image = tf.numpy_function(lambda i, m: report.read_image((i.decode(), m.decode())),
                                      [image_path, mask_path], tf.uint8, stateful=False)
            image = tf.ensure_shape(image, [None, None, 3])
        mask = tf.numpy_function(lambda i, m: report.read_mask((i.decode(), m.decode())),
                                 [image_path, mask_path], tf.uint8, stateful=False)
        return image, tf.ensure_shape(mask, [None, None])

    paths = ([image for image, _ in pairs], [mask for _, mask in pairs])
    return tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
