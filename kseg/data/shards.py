"""Sharded TFRecord datasets, for data too large to check and decode at every start.

    kseg data pack DIR --out SHARDS --shards 64      # or: kseg.data.shards.pack("DIR", "SHARDS", 64)
    split = kseg.data.load("SHARDS", "train")         # kseg train --data SHARDS

`pack` checks a folder dataset once (either layout; `DIR/train`, `DIR/val`... or one folder, split as
`load` splits it) and writes each split as `<split>-00000-of-00064.tfrecord` files: the image file's own
bytes, the mask as an index PNG (palettes, colour tables and 0/255 masks already resolved), and the
size. Pairs are shuffled (fixed seed) before they are dealt to the shards, so any few shards are a
fair sample. `index.json` (counts, class histogram, class names, sizes: what the training recipe reads)
is written last and atomically: a folder without it is an unfinished pack. Packing again into that
folder resumes, keeping the shards already written for the same plan, or starts clean for another.

Reading interleaves the shard files in parallel; under `tf.distribute` each worker reads its own shard
files (auto-shard by file), so give at least as many shards as workers (a few per worker is better).
"""

import hashlib
import io
import json
import os
import random

import numpy as np
from PIL import Image

from kseg import files
from kseg.data import folder
from kseg.data.source import DataStats, Split
from kseg.errors import DataError

INDEX = "index.json"
PLAN = "pack-plan.json"
FORMAT = "kseg-shards"
VERSION = 1


def is_packed(path):
    """True for a folder written by `pack` (its index exists)."""
    return os.path.isfile(os.path.join(path, INDEX))


def pack(root, out, shards=8, num_classes=None, colors=None, log=print, format=None):
    """Writes the folder dataset (or annotated dataset, `kseg.data.formats`: detected or named by `format`) at
    `root` as sharded TFRecords in `out`; returns the index dict.

    `shards`: files for the training split (other splits get a share in proportion to their size, at
    least one). Every split is checked first (`kseg.data.check`): any problem raises a DataError.
    """
    import tensorflow as tf

    if not isinstance(shards, int) or shards < 1:
        raise DataError(f"shards must be a positive integer, got {shards!r}")
    if os.path.abspath(out) == os.path.abspath(root):
        raise DataError(f"{out}: write the shards to another folder than the data")
    splits = _checked_splits(root, num_classes, colors, format)
    base = root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))  # an annotation file's folder
    num_classes = max(report.num_classes for report, _ in splits.values())
    train_count = len(splits.get("train", next(iter(splits.values())))[1])
    plan = {"format": FORMAT, "version": VERSION, "root": os.path.abspath(root), "splits": {}}
    orders = {}
    for name, (_, pairs) in splits.items():
        order = sorted(pairs)
        random.Random(0).shuffle(order)
        count = shards if name == "train" else max(1, round(shards * len(order) / max(train_count, 1)))
        count = min(count, len(order))
        plan["splits"][name] = [[os.path.relpath(p, base) for p in pair] for pair in order], count
        orders[name] = order, count
    stats = [os.stat(path) for _, pairs in splits.values() for pair in pairs for path in pair]
    stamps = [[stat.st_size, stat.st_mtime_ns] for stat in stats]  # a changed file is a new plan
    fingerprint = hashlib.sha1(json.dumps([plan, stamps], sort_keys=True).encode()).hexdigest()
    os.makedirs(out, exist_ok=True)
    same_plan = (files.read_json(os.path.join(out, PLAN)) or {}).get("fingerprint") == fingerprint
    packed = files.read_json(os.path.join(out, INDEX))
    if packed and same_plan:
        log(f"{out}: already packed from {root}, unchanged")
        return packed
    if not same_plan:
        _clean(out)  # another plan (or none): nothing of it can be kept
        files.write_json(os.path.join(out, PLAN), {"fingerprint": fingerprint, "root": os.path.abspath(root)})

    index = {"format": FORMAT, "version": VERSION, "num_classes": num_classes, "splits": {}}
    for name, (report, _) in splits.items():
        order, count = orders[name]
        names = []
        for shard in range(count):
            path = os.path.join(out, f"{name}-{shard:05d}-of-{count:05d}.tfrecord")
            names.append(os.path.basename(path))
            if os.path.exists(path):
                continue  # written by an interrupted pack of the same plan
            with tf.io.TFRecordWriter(path + ".tmp") as writer:
                for pair in order[shard::count]:
                    writer.write(_example(report, pair))
            os.replace(path + ".tmp", path)
            log(f"  {name}: shard {shard + 1}/{count}")
        index["splits"][name] = {
            "files": names, "count": len(order), "class_pixels": report.histogram[:num_classes].tolist(),
            "sizes": [[h, w, n] for (h, w), n in sorted(report.sizes.items())], "grey": report.grey,
        }
    first = next(iter(splits.values()))[0]
    names = list(folder.names_of(first.root, first))[:num_classes]
    index["class_names"] = names + [f"class_{i}" for i in range(len(names), num_classes)]
    files.write_json(os.path.join(out, INDEX), index)  # last: its presence means the pack is whole
    return index


def from_shards(root, split="train", num_classes=None):
    """A Split read from the shards `pack` wrote (see `kseg.data.load`)."""
    import tensorflow as tf

    index = files.read_json(os.path.join(root, INDEX))
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{root}/{INDEX}: not a kseg shard index (write one with: kseg data pack)")
    if split not in index["splits"]:
        raise DataError(f"{root}: no split {split!r} (it holds {', '.join(index['splits'])})")
    entry = index["splits"][split]
    paths = [os.path.join(root, name) for name in entry["files"]]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise DataError(f"{missing[0]}: shard listed in {INDEX} is missing")
    if num_classes is not None and num_classes < index["num_classes"]:
        raise DataError(f"{root}: labels go up to {index['num_classes'] - 1}, more than {num_classes} classes")
    num_classes = num_classes or index["num_classes"]

    features = {"image": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([], tf.string)}

    def decode(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(example["image"], channels=3, dtype=tf.uint8, expand_animations=False)
        mask = tf.io.decode_png(example["mask"], channels=1)[..., 0]
        return image, mask

    examples = tf.data.Dataset.from_tensor_slices(paths).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(paths), 16), num_parallel_calls=tf.data.AUTOTUNE
    ).map(decode, num_parallel_calls=tf.data.AUTOTUNE).apply(
        tf.data.experimental.assert_cardinality(entry["count"]))  # known length: Keras counts its steps
    sizes = {(h, w): n for h, w, n in entry["sizes"]}
    pixels = np.zeros(num_classes, np.int64)
    pixels[: len(entry["class_pixels"])] = entry["class_pixels"]
    names = list(index.get("class_names") or [])[:num_classes]
    names += [f"class_{i}" for i in range(len(names), num_classes)]
    return Split(examples, num_classes, names, entry["count"], f"{root} [{split}: {len(paths)} shards]",
                 next(iter(sizes)) if len(sizes) == 1 else None, DataStats(sizes, pixels, entry["grey"]))


def _checked_splits(root, num_classes, colors, format=None):
    """{split: (DataReport, pairs)}: every split subfolder (or split of an annotated dataset), or one folder
    split as `load` splits it."""
    from kseg.data import formats

    if format != "folder" and (format or formats.detect(root) or os.path.isfile(root)):
        module, found, reports = formats.resolve(root, format), {}, {}
        for name in ("train", "val", "test"):
            if name == "test" and name not in module.splits(root):
                continue
            _, read_split, subset = formats.plan(root, name, module.NAME)
            if read_split not in reports:
                reports[read_split] = formats.check(root, read_split, module.NAME, num_classes)
                reports[read_split].raise_first()
            report = reports[read_split]
            held = folder.holdout(report.pairs) if subset else set()
            pairs = [p for i, p in enumerate(report.pairs) if (i in held) == (subset == "val")]
            if pairs:
                found[name] = report, pairs
        return found
    subfolders = sorted(name for name in os.listdir(root) if _has_layout(os.path.join(root, name))) \
        if os.path.isdir(root) else []
    if subfolders:
        found = {}
        for name in subfolders:
            report = folder.check(os.path.join(root, name), num_classes=num_classes, colors=colors)
            report.raise_first()
            found[name] = report, report.pairs
        return found
    report = folder.check(root, num_classes=num_classes, colors=colors)
    report.raise_first()
    held = folder.holdout(report.pairs)
    return {"train": (report, [p for i, p in enumerate(report.pairs) if i not in held]),
            "val": (report, [p for i, p in enumerate(report.pairs) if i in held])} if held else \
        {"train": (report, report.pairs)}


def _has_layout(path):
    try:
        folder.find_layout(path)
        return True
    except DataError:
        return False


def _example(report, pair):
    import tensorflow as tf

    image_path = pair[0]
    image = report.image_bytes(pair)
    mask = report.read_mask(pair)
    buffer = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buffer, format="PNG")
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "mask": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
        "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[mask.shape[0]])),
        "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[mask.shape[1]])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[os.path.basename(image_path).encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _clean(out):
    for name in os.listdir(out):
        if name.endswith((".tfrecord", ".tfrecord.tmp")) or name in (INDEX, PLAN):
            os.remove(os.path.join(out, name))
