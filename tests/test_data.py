"""Folder, TFDS and synthetic sources; the pipeline; and one-line errors that name the file."""

import os
import time

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image

import kseg
from kseg import viz
from kseg.errors import DataError

pytestmark = requires_tensorflow


def write_pair(root, stem, image, mask, image_ext=".png", mask_mode="P"):
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    if mask_mode == "P":
        viz.label_image(mask).save(root / "masks" / f"{stem}.png")
    elif mask_mode == "RGB":
        Image.fromarray(viz.colorize(mask)).save(root / "masks" / f"{stem}.png")
    else:
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")


@pytest.fixture
def folder(tmp_path):
    """Six pairs: PNG/JPEG/BMP images, grey/RGB/RGBA, palette/index masks, one with ignored pixels."""
    images, masks = kseg.data.generate(6, (40, 48), seed=3)
    masks[0, :3] = 255
    write_pair(tmp_path, "a", images[0], masks[0])
    write_pair(tmp_path, "b", images[1], masks[1], ".jpg")
    write_pair(tmp_path, "c", images[2], masks[2], ".bmp", mask_mode="L")
    write_pair(tmp_path, "d", images[3].mean(-1).astype(np.uint8), masks[3])  # grayscale image
    rgba = np.concatenate([images[4], np.full((40, 48, 1), 200, np.uint8)], -1)
    write_pair(tmp_path, "e", rgba, masks[4])
    write_pair(tmp_path, "f", images[5], masks[5], mask_mode="L")
    return tmp_path, images, masks


def examples(split):
    return list(split.examples.as_numpy_iterator())


def test_folder_pairs_by_stem_and_decodes_every_format(folder):
    root, images, masks = folder
    split = kseg.data.from_folder(str(root), num_classes=6)
    got = examples(split)
    assert len(got) == len(split) == 6 and split.image_size == (40, 48)
    for (image, mask), want_mask in zip(got, masks):
        assert image.shape == (40, 48, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, want_mask)  # palette masks give indices, not colours
    np.testing.assert_array_equal(got[0][0], images[0])  # lossless PNG decodes exactly
    pillow_jpeg = np.asarray(Image.open(root / "images" / "b.jpg")).astype(int)
    assert np.abs(got[1][0] - pillow_jpeg).mean() < 2  # JPEG: same decoder family, lossy
    np.testing.assert_array_equal(got[4][0], images[4])  # RGBA: alpha dropped
    assert (got[3][0][..., 0] == got[3][0][..., 2]).all()  # grey becomes three equal channels


def test_rgb_colour_masks_with_a_table(tmp_path):
    images, masks = kseg.data.generate(2, (32, 32))
    for i in range(2):
        write_pair(tmp_path, f"x{i}", images[i], masks[i], mask_mode="RGB")
    with pytest.raises(DataError, match="RGB colour mask; pass a colour table"):
        kseg.data.from_folder(str(tmp_path))
    table = {tuple(int(c) for c in viz.palette()[k]): k for k in range(6)}
    split = kseg.data.from_folder(str(tmp_path), colors=table)
    np.testing.assert_array_equal(examples(split)[1][1], masks[1])
    del table[(128, 0, 0)]  # class 1's colour
    with pytest.raises(DataError, match=r"colour \(128, 0, 0\) is not in the colour table"):
        kseg.data.read_mask(str(tmp_path / "masks" / "x1.png"), table)  # x1 holds class 1


def one_line(error):
    assert "\n" not in str(error.value)
    return str(error.value)


def test_mask_size_mismatch_names_the_file(folder):
    root, images, masks = folder
    viz.label_image(masks[0][:30]).save(root / "masks" / "a.png")
    with pytest.raises(DataError) as error:
        kseg.data.from_folder(str(root))
    assert f"{root / 'masks' / 'a.png'}: mask is 48x30 but image a.png is 48x40" in one_line(error)


def test_label_out_of_range_names_the_file_and_label(folder):
    root, images, masks = folder
    bad = masks[2].copy()
    bad[5, 5] = 9
    viz.label_image(bad).save(root / "masks" / "c.png")
    with pytest.raises(DataError) as error:
        kseg.data.from_folder(str(root), num_classes=6)
    assert "c.png: label 9 out of range for 6 classes (1 pixels" in one_line(error)


def test_missing_partners_corrupt_files_and_empty_folders(folder, tmp_path_factory):
    root, images, _ = folder
    Image.fromarray(images[0]).save(root / "images" / "lonely.png")
    with pytest.raises(DataError, match=r"lonely.png: no mask \(expected .*lonely.png\)") as error:
        kseg.data.from_folder(str(root))
    assert "more problem" not in one_line(error)
    os.remove(root / "images" / "lonely.png")
    os.remove(root / "images" / "b.jpg")
    with pytest.raises(DataError, match="b.png: mask without an image"):
        kseg.data.from_folder(str(root))
    (root / "images" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(DataError, match="b.jpg: cannot decode image"):
        kseg.data.from_folder(str(root))
    empty = tmp_path_factory.mktemp("empty")
    os.makedirs(empty / "images")
    os.makedirs(empty / "masks")
    with pytest.raises(DataError, match="empty folder"):
        kseg.data.from_folder(str(empty))
    with pytest.raises(DataError, match="expected subfolders images/ and masks/"):
        kseg.data.from_folder(str(empty / "images"))


def test_check_reports_every_problem_and_the_histogram(folder):
    root, _, masks = folder
    (root / "masks" / "f.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "orphan.png")
    report = kseg.data.check(str(root))
    assert len(report.problems) == 2 and len(report.pairs) == 5
    assert report.histogram[255] == 3 * 48
    assert report.histogram[:6].sum() == sum((m != 255).sum() for m in masks[:5])


def test_a_second_check_of_an_unchanged_folder_decodes_nothing(folder, monkeypatch):
    from kseg.data import cache
    from kseg.data import folder as folder_module

    root, _, masks = folder
    old = time.time() - 60  # files older than the clock's tick, as a real dataset's are
    for path in root.rglob("*.*"):
        os.utime(path, (old, old))
    first = kseg.data.check(str(root))
    decoded = []
    for name in ("_image_size", "read_mask"):
        original = getattr(folder_module, name)
        monkeypatch.setattr(folder_module, name, lambda *a, _f=original, **k: decoded.append(a[0]) or _f(*a, **k))
    second = kseg.data.check(str(root))
    assert decoded == [] and os.listdir(os.path.join(cache.cache_dir(), "folder-checks"))
    assert second.pairs == first.pairs and second.sizes == first.sizes and second.grey == first.grey
    np.testing.assert_array_equal(second.histogram, first.histogram)

    changed = np.where(masks[5] == 0, 7, masks[5])  # a label out of range, in one changed file
    Image.fromarray(changed, mode="L").save(root / "masks" / "f.png")
    os.utime(root / "masks" / "f.png", (old + 1, old + 1))
    third = kseg.data.check(str(root), num_classes=6)
    assert sorted(os.path.basename(p) for p in decoded) == ["f.png", "f.png"]  # that pair, and no other
    assert len(third.problems) == 1 and "f.png: label 7 out of range" in third.problems[0]
    assert kseg.data.check(str(root), use_cache=False).histogram[7] == third.histogram[7] > 0


def test_pipeline_training_batches_are_joint_and_nearest(folder):
    """Images whose pixel values encode the label show that crops, scales and flips are joint."""
    import tensorflow as tf

    root, _, _ = folder
    split = kseg.data.from_folder(str(root), num_classes=6)
    split.examples = split.examples.map(lambda image, mask: (tf.stack([mask] * 3, -1) * 40, mask))
    for scale_range, min_agreement in (((1.0, 1.0), 1.0), ((0.5, 2.0), 0.8)):
        batches = kseg.data.pipeline(split, batch_size=3, size=(32, 36), training=True, jitter=False,
                                     scale_range=scale_range, seed=5)
        for images, labels in batches.repeat(3).as_numpy_iterator():
            assert images.shape == (3, 32, 36, 3) and images.dtype == np.float32 and labels.dtype == np.uint8
            assert set(np.unique(labels)) <= set(range(6)) | {255}  # nearest only: no blended labels
            inside = labels != 255
            agree = np.abs(images[..., 0][inside] - 40.0 * labels[inside]) < 1
            assert agree.mean() >= min_agreement  # resampled images blend at edges; labels never do


def test_pipeline_is_reproducible_by_seed():
    split = kseg.data.from_synthetic("train", num_images=8, size=(48, 48))
    run = lambda seed: [x for x, _ in kseg.data.pipeline(  # noqa: E731
        split, 4, size=(32, 32), training=True, seed=seed).as_numpy_iterator()]
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_evaluation_pipeline_pads_mixed_sizes_with_ignore(tmp_path):
    images, masks = kseg.data.generate(2, (32, 40))
    write_pair(tmp_path, "a", images[0], masks[0])
    write_pair(tmp_path, "b", images[1][:20, :30], masks[1][:20, :30])
    split = kseg.data.from_folder(str(tmp_path))
    assert split.image_size is None
    (x, y), = list(kseg.data.pipeline(split, 2).as_numpy_iterator())
    assert x.shape == (2, 32, 40, 3) and (y[1, 20:] == 255).all() and (y[1, :, 30:] == 255).all()


def test_synthetic_is_deterministic_and_has_every_class():
    a_images, a_masks = kseg.data.generate(6, (64, 64), seed=7)
    b_images, b_masks = kseg.data.generate(6, (64, 64), seed=7)
    np.testing.assert_array_equal(a_images, b_images)
    assert not np.array_equal(a_images, kseg.data.generate(6, (64, 64), seed=8)[0])
    _, masks = kseg.data.generate(40, (64, 64))
    assert set(np.unique(masks)) == set(range(len(kseg.data.SYNTHETIC_CLASSES)))
    assert 0.05 < (masks > 0).mean() < 0.5


def test_synthetic_written_to_disk_reads_back_as_a_folder(tmp_path):
    kseg.data.write_folder(str(tmp_path / "train"), 4, (32, 32))
    split = kseg.data.load(str(tmp_path), "train")
    _, masks = kseg.data.generate(4, (32, 32))
    np.testing.assert_array_equal(np.stack([m for _, m in examples(split)]), masks)


def test_tfds_loader_maps_trimaps_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3):
        split = kseg.data.from_tfds("oxford_iiit_pet", split="train", data_dir=str(tmp_path))
        got = examples(split)
    assert split.num_classes == 3 and split.class_names == ["background", "pet", "border"]
    assert len(got) == 3
    for image, mask in got:
        assert image.ndim == 3 and image.shape[-1] == 3 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 1, 2, 255}


def test_tfds_without_prepared_data_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as error:
        kseg.data.from_tfds("oxford_iiit_pet", data_dir=str(tmp_path))
    assert one_line(error).startswith("tfds:oxford_iiit_pet split 'train':")


def test_load_rejects_a_missing_folder():
    with pytest.raises(DataError, match="nope: no such folder"):
        kseg.data.load("nope")


def _sorted_examples(split):
    return sorted(((image.tobytes(), mask.tobytes()) for image, mask in examples(split)))


def test_packed_shards_read_back_as_the_folder_with_its_statistics(tmp_path):
    from kseg.data import shards

    data, out = tmp_path / "data", tmp_path / "shards"
    kseg.data.write_folder(str(data / "train"), 10, (24, 32), seed=1)
    kseg.data.write_folder(str(data / "val"), 4, (24, 32), seed=2, split="val")
    (data / "train" / "images" / ".DS_Store").write_bytes(b"junk")  # skipped, as by load()
    index = shards.pack(str(data), str(out), shards=3, log=lambda line: None)
    assert sorted(os.listdir(out)) == sorted(["index.json", "pack-plan.json", "val-00000-of-00001.tfrecord"]
                                             + [f"train-{i:05d}-of-00003.tfrecord" for i in range(3)])
    for split in ("train", "val"):
        packed, original = kseg.data.load(str(out), split), kseg.data.load(str(data), split)
        assert _sorted_examples(packed) == _sorted_examples(original)
        assert (len(packed), packed.num_classes, packed.class_names, packed.image_size) == (
            len(original), original.num_classes, original.class_names, original.image_size)
        np.testing.assert_array_equal(packed.stats.class_pixels, original.stats.class_pixels)
        assert packed.stats.sizes == original.stats.sizes and packed.stats.grey == original.stats.grey
    assert index["splits"]["train"]["count"] == 10


def test_an_interrupted_pack_has_no_index_and_resumes(tmp_path):
    from kseg.data import shards

    data, out = tmp_path / "data", tmp_path / "shards"
    kseg.data.write_folder(str(data), 12, (16, 16), seed=3)  # one folder: split as load() splits it
    shards.pack(str(data), str(out), shards=4, log=lambda line: None)
    os.remove(out / "index.json")  # as if killed before the end:
    os.remove(out / "train-00002-of-00004.tfrecord")
    assert not shards.is_packed(str(out))
    with pytest.raises(DataError, match="no split 'train'|not a kseg shard|no such folder|expected subfolders"):
        kseg.data.load(str(out), "train")
    written = []
    shards.pack(str(data), str(out), shards=4, log=written.append)
    assert written == ["  train: shard 3/4"]  # only the missing shard is written again
    assert len(kseg.data.load(str(out), "train")) + len(kseg.data.load(str(out), "val")) == 12
    shards.pack(str(data), str(out), shards=2, log=written.append)  # another plan: starts clean
    assert sorted(n for n in os.listdir(out) if n.startswith("train")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
