"""The tf.data pipeline: joint geometric augmentation, photometric jitter, batching, prefetch.

Randomness is stateless and seeded per example, so a run is reproducible whatever the parallelism.
Masks are only ever resized with nearest neighbour, padded with the ignore label, and cropped and
flipped together with their image. Rare classes can be oversampled: a share of the crops is centred on a
pixel of one of them (`oversample`, `oversample_classes`), as nnU-Net does for a third of its patches
(MIC-DKFZ/nnUNet, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py: oversample_foreground_percent = 0.33).
"""

from collections.abc import Sequence

import tensorflow as tf

from kseg.data.source import IGNORE_LABEL, Split

PAD_PIXEL = 127.5  # padding looks like the mean grey; the padded labels are ignored anyway

# Augmentation presets, by what the camera sees. Natural photos have an up and a down, objects at any
# distance and any colour cast; top-down images (microscopy, aerial, satellite) have no up, a fixed scale
# and, when grey, no colour to jitter. "flip" (photos) and "turns" (top-down) are for short runs: they
# underfit, and stronger augmentation only slows them down (2-minute runs on the synthetic shapes: 79% mIoU
# with flips, 62% with scale 0.75-1.33 and colour jitter, 34% with scale 0.5-2).
JITTERS = ("color", "brightness", None)


def pipeline(
    split: Split,
    batch_size: int = 8,
    size: tuple[int, int] | None = None,
    training: bool = False,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    jitter: str | bool | None = "color",
    seed: int = 0,
    shuffle_buffer: int = 1024,
    cache: bool | str = False,
    repeat: bool = False,
    vertical_flip: bool = False,
    rotate90: bool = False,
    oversample: float = 0.0,
    oversample_classes: Sequence[int] = (),
) -> tf.data.Dataset:
    """Batches of (float32 pixels (N, H, W, 3) in [0, 255], uint8 masks (N, H, W)) from a `Split`.

    Training: shuffle, random scale in `scale_range`, pad and random-crop to `size`, horizontal flip
    (`vertical_flip` and `rotate90` for images without an up: square crops only for rotations), and
    `jitter` on the image only: "color" (brightness, contrast, saturation, hue), "brightness"
    (brightness and contrast) or None; incomplete batches dropped. With `oversample_classes`, a share
    `oversample` of the crops is centred on a pixel of one of those classes present in the image (a class
    picked uniformly, then a pixel of it; clipped into the image, so the crop holds that pixel); the rest
    are uniform. `kseg.training.config.AUGMENTATIONS` holds presets.
    Evaluation: resized to `size` when given (masks with nearest neighbour), otherwise batched as is
    (mixed sizes are padded per batch; padded pixels carry the ignore label).
    """
    examples = split.examples
    if cache:
        examples = examples.cache()
    if training:
        if size is None:
            raise ValueError("training needs a crop size, e.g. size=(256, 256)")
        if isinstance(jitter, bool):  # True / False: the default jitter or none
            jitter = "color" if jitter else None
        if jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {JITTERS}, got {jitter!r}")
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:  # before the seeds are zipped on: every pass gets new augmentations
            examples, repeat = examples.repeat(), False
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        augment = _augmenter(tuple(size), scale_range, flip, jitter, vertical_flip, rotate90,
                             oversample, tuple(oversample_classes))
        examples = tf.data.Dataset.zip((examples, seeds)).map(
            lambda example, s: augment(*example, s), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        examples = examples.map(
            lambda image, mask: _resize_pair(tf.cast(image, tf.float32), mask, size),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if repeat:
        examples = examples.repeat()
    if training or size is not None or split.image_size is not None:
        batches = examples.batch(batch_size, drop_remainder=training)
    else:
        batches = examples.padded_batch(
            batch_size, padding_values=(tf.constant(0.0), tf.constant(IGNORE_LABEL, tf.uint8))
        )
    return batches.prefetch(tf.data.AUTOTUNE)


def _resize_pair(image, mask, size):
    if size is None:
        return image, mask
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def crop_window(mask: tf.Tensor, size: tuple[int, int], seed: tf.Tensor, oversample: float = 0.0,
                classes: Sequence[int] = ()) -> tf.Tensor:
    """(top, left) of a `size` crop of `mask` (at least that large): with probability `oversample` (and when one
    of `classes` is in the mask) centred on a pixel of one of `classes` present, else uniform. Graph ops only.

        mask = tf.zeros((100, 100), tf.uint8)
        crop_window(mask, (32, 32), tf.constant([1, 2]), 1 / 3, (1,))  # [top, left], each in [0, 68]
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    window = tf.constant(size, tf.int32)
    positions = tf.shape(mask)[:2] - window + 1
    uniform = tf.cast(tf.random.stateless_uniform([2], seeds[0]) * tf.cast(positions, tf.float32), tf.int32)
    uniform = tf.minimum(uniform, positions - 1)
    if not classes or not oversample:
        return uniform
    wanted = tf.constant(classes, mask.dtype)
    present = tf.reduce_any(mask[..., None] == wanted, axis=(0, 1))
    # A class first, then a pixel of it: a large rare region does not crowd out a small one (nnU-Net does so too).
    picked = tf.random.stateless_categorical(tf.math.log(tf.cast(present, tf.float32))[None], 1, seeds[1])[0, 0]
    pixels = tf.where(mask == wanted[tf.minimum(picked, len(classes) - 1)])
    count = tf.shape(pixels)[0]
    index = tf.random.stateless_uniform([], seeds[2], 0, tf.maximum(count, 1), tf.int32)
    centre = tf.cast(tf.gather(tf.concat([pixels, tf.zeros([1, 2], tf.int64)], 0), index), tf.int32)
    centred = tf.clip_by_value(centre - window // 2, 0, positions - 1)
    use = tf.logical_and(tf.random.stateless_uniform([], seeds[3]) < oversample, tf.reduce_any(present))
    return tf.where(use, centred, uniform)


def _augmenter(size, scale_range, flip, jitter, vertical_flip, rotate90, oversample=0.0, oversample_classes=()):
    crop_height, crop_width = size
    rotate90 = rotate90 and crop_height == crop_width

    def augment(image, mask, seed):
        seeds = tf.random.experimental.stateless_split(seed, 9)
        image = tf.cast(image, tf.float32)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.random.stateless_uniform([], seeds[0], *scale_range)
        scaled = tf.cast(tf.round(shape * scale), tf.int32)
        image, mask = _resize_pair(image, mask, scaled)

        pad_height = tf.maximum(crop_height - scaled[0], 0)
        pad_width = tf.maximum(crop_width - scaled[1], 0)
        paddings = [[0, pad_height], [0, pad_width]]
        image = tf.pad(image, paddings + [[0, 0]], constant_values=PAD_PIXEL)
        mask = tf.pad(mask, paddings, constant_values=IGNORE_LABEL)

        joint = tf.concat([image, tf.cast(mask, tf.float32)[..., None]], axis=-1)
        if oversample and oversample_classes:
            top, left = tf.unstack(crop_window(mask, size, seeds[1], oversample, oversample_classes))
            joint = tf.slice(joint, [top, left, 0], [crop_height, crop_width, 4])
        else:  # the uniform crop as before oversampling existed: same seeds, same crops
            joint = tf.image.stateless_random_crop(joint, [crop_height, crop_width, 4], seeds[1])
        if flip:
            joint = tf.image.stateless_random_flip_left_right(joint, seeds[2])
        if vertical_flip:
            joint = tf.image.stateless_random_flip_up_down(joint, seeds[7])
        if rotate90:
            joint = tf.image.rot90(joint, tf.random.stateless_uniform([], seeds[8], 0, 4, tf.int32))
        image, mask = joint[..., :3], tf.cast(joint[..., 3], tf.uint8)

        if jitter:
            image = image / 255.0
            image = tf.image.stateless_random_brightness(image, 0.125, seeds[3])
            image = tf.image.stateless_random_contrast(image, 0.75, 1.25, seeds[4])
            if jitter == "color":
                image = tf.image.stateless_random_saturation(tf.clip_by_value(image, 0, 1), 0.75, 1.25, seeds[5])
                image = tf.image.stateless_random_hue(image, 0.04, seeds[6])
            image = tf.clip_by_value(image, 0.0, 1.0) * 255.0
        return tf.ensure_shape(image, [crop_height, crop_width, 3]), tf.ensure_shape(mask, [crop_height, crop_width])

    return augment
