"""Annotation formats (kseg.data.formats): each writes a tiny dataset in its real layout, with masks the test
draws itself (numpy rectangles), then loads it by detection and by name and compares pixel for pixel."""

import base64
import io
import json
import os

import numpy as np
import pytest
from conftest import requires_tensorflow
from PIL import Image

import kseg
from kseg.data import formats
from kseg.errors import DataError

pytestmark = requires_tensorflow
H, W = 32, 48


def picture(i):
    """A smooth image whose mean tells it apart from the others (JPEG keeps it)."""
    ramp = np.linspace(0, 30, W)[None, :, None]
    return np.clip(np.full((H, W, 3), 30 + 50 * i) + ramp, 0, 255).astype(np.uint8)


def save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=98) if str(path).endswith(".jpg") else Image.fromarray(array).save(path)
    return str(path)


def box(mask, top, left, bottom, right, value):
    """Fills rows top..bottom-1, columns left..right-1: what a polygon with corners (left, top), (right, bottom)
    covers."""
    mask[top:bottom, left:right] = value
    return mask


def corners(top, left, bottom, right):
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def flat(points):
    return [float(v) for point in points for v in point]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    pixels = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], pixels, [1 - pixels[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [H, W], "counts": counts}


# Writers: each makes a dataset in a format's layout under `root` and returns
# (path to load, {image index: expected mask} per split, class names).


def write_coco(root):
    from pycocotools import mask as coco_mask

    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]
    expected, annotations = {"train": {}, "val": {}}, []

    def add(image_id, category, segmentation, **more):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                            "segmentation": segmentation, "iscrowd": 0, **more})

    for split, indices in {"train": [0, 1, 2], "val": [3]}.items():
        images = []

        for i in indices:
            save(root / f"{split}2017" / f"{i:012d}.jpg", picture(i))
            images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg", "height": H, "width": W})
            mask = np.zeros((H, W), np.uint8)
            if i == 0:  # a small person listed before a large car around it: the smaller one wins
                add(100 + i, 1, [flat(corners(8, 10, 14, 20))])
                add(100 + i, 3, [flat(corners(4, 6, 20, 30)), flat(corners(24, 0, 32, 8))])
                box(mask, 4, 6, 20, 30, 2), box(mask, 24, 0, 32, 8, 2), box(mask, 8, 10, 14, 20, 1)
            elif i == 1:  # compressed RLE (toothbrush) and an uncompressed crowd RLE (person)
                region = box(np.zeros((H, W), np.uint8), 2, 30, 12, 47, 1)
                rle = coco_mask.encode(np.asfortranarray(region))
                add(100 + i, 90, {"size": rle["size"], "counts": rle["counts"].decode()})
                crowd = box(np.zeros((H, W), np.uint8), 16, 4, 30, 20, 1)
                add(100 + i, 1, uncompressed_rle(crowd), iscrowd=1)
                box(mask, 2, 30, 12, 47, 3), box(mask, 16, 4, 30, 20, 1)
            elif i == 3:
                add(100 + i, 3, [flat(corners(0, 0, 10, 48))])
                box(mask, 0, 0, 10, 48, 2)
            expected[split][i] = mask  # image 2 has no annotations: all background
        content = {"images": images, "annotations": annotations, "categories": categories}
        os.makedirs(root / "annotations", exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
        annotations.clear()
    return root, expected, ["background", "person", "car", "toothbrush"]


def write_cityscapes(root):
    expected = {"train": {}, "val": {}}
    for split, city, indices in (("train", "aachen", [0, 1]), ("val", "frankfurt", [2])):
        for i in indices:
            stem = f"{city}_{i:06d}_000019"
            save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", picture(i))
            ids = np.full((H, W), 7, np.uint8)  # road
            box(ids, 0, 0, 8, W, 23), box(ids, 10, 5, 20, 25, 26), box(ids, 20, 30, 32, 40, 33)  # sky, car, bicycle
            box(ids, 0, 40, 4, 48, 0), box(ids, 28, 0, 32, 4, 4)  # unlabeled, static: ignored
            save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            want = np.zeros((H, W), np.uint8)
            box(want, 0, 0, 8, W, 10), box(want, 10, 5, 20, 25, 13), box(want, 20, 30, 32, 40, 18)
            box(want, 0, 40, 4, 48, 255), box(want, 28, 0, 32, 4, 255)
            expected[split][i] = want
    from kseg.data.formats import cityscapes

    return root, expected, list(cityscapes.CLASS_NAMES)


def write_ade20k(root):
    from kseg.data.formats import ade20k

    inner, expected = root / "ADEChallengeData2016", {"train": {}, "val": {}}
    for split, folder, indices in (("train", "training", [0, 1]), ("val", "validation", [2])):
        for i in indices:
            stem = f"ADE_{folder[:5]}_{i:08d}"
            save(inner / "images" / folder / f"{stem}.jpg", picture(i))
            values = np.zeros((H, W), np.uint8)  # "other": ignored
            box(values, 0, 0, 16, W, 1), box(values, 16, 10, 32, 20, 13), box(values, 20, 30, 30, 40, 150)
            save(inner / "annotations" / folder / f"{stem}.png", values)
            want = np.full((H, W), 255, np.uint8)
            box(want, 0, 0, 16, W, 0), box(want, 16, 10, 32, 20, 12), box(want, 20, 30, 30, 40, 149)
            expected[split][i] = want
    rows = ["Idx,Ratio,Train,Val,Name"] + [f"{i + 1},0.01,10,1,{name};synonym" for i, name in
                                           enumerate(ade20k.CLASS_NAMES)]
    (inner / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    return root, expected, list(ade20k.CLASS_NAMES)


def write_sbd(root):
    import scipy.io

    from kseg.data.formats import voc_sbd

    dataset, expected = root / "benchmark_RELEASE" / "dataset", {"train": {}, "val": {}}
    for split, indices in (("train", [0, 1]), ("val", [2])):
        stems = []
        for i in indices:
            stem = f"2008_{i:06d}"
            stems.append(stem)
            save(dataset / "img" / f"{stem}.jpg", picture(i))
            labels = np.zeros((H, W), np.uint8)
            box(labels, 4, 4, 28, 24, 15), box(labels, 4, 24, 28, 25, 255), box(labels, 10, 30, 20, 46, 12 + i)
            os.makedirs(dataset / "cls", exist_ok=True)
            scipy.io.savemat(dataset / "cls" / f"{stem}.mat", {"GTcls": {
                "Segmentation": labels, "Boundaries": np.zeros((1, 20), object), "CategoriesPresent": [15]}})
            expected[split][i] = labels
        (dataset / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root / "benchmark_RELEASE", expected, list(voc_sbd.CLASS_NAMES)


def write_labelme(root):
    """a.json: a polygon (cat), a later rectangle (dog) over it, a line (no pixels); b.json: a circle, the image
    embedded as imageData only; c.json: nothing but a point. Classes collected: background, cat, dog."""
    os.makedirs(root)
    shapes = {
        0: [{"label": "cat", "points": corners(2, 2, 20, 30), "shape_type": "polygon"},
            {"label": "dog", "points": [[20, 10], [40, 26]], "shape_type": "rectangle"},
            {"label": "cat", "points": [[0, 31], [47, 31]], "shape_type": "line"}],
        1: [{"label": "dog", "points": [[24, 16], [24, 22]], "shape_type": "circle"}],
        2: [{"label": "cat", "points": [[5, 5]], "shape_type": "point"}],
    }
    expected = {}
    for i, items in shapes.items():
        name = "abc"[i]
        content = {"version": "5.4.1", "flags": {}, "shapes": items, "imagePath": f"{name}.png",
                   "imageHeight": H, "imageWidth": W, "imageData": None}
        if i == 1:
            buffer = io.BytesIO()
            Image.fromarray(picture(i)).save(buffer, format="PNG")
            content["imageData"] = base64.b64encode(buffer.getvalue()).decode()
        else:
            save(root / f"{name}.png", picture(i))
        (root / f"{name}.json").write_text(json.dumps(content))
        want = np.zeros((H, W), np.uint8)
        if i == 0:
            box(want, 2, 2, 20, 30, 1), box(want, 10, 20, 26, 40, 2)
        if i == 1:
            yy, xx = np.mgrid[0:H, 0:W] + 0.5
            want[(xx - 24) ** 2 + (yy - 16) ** 2 <= 36] = 2
        expected[i] = want
    return root, {"test": expected}, ["background", "cat", "dog"]


def write_cvat_masks(root):
    os.makedirs(root / "ImageSets" / "Segmentation")
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\n"
                                       "dog:51,221,255::\n")
    colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)
    expected = {}
    for i in range(3):
        save(root / "JPEGImages" / f"frame_{i:06d}.jpg", picture(i))
        labels = np.zeros((H, W), np.uint8)
        box(labels, 0, 0, 10 + 5 * i, 20, 1), box(labels, 12, 24, 32, 48, 2)
        save(root / "SegmentationClass" / f"frame_{i:06d}.png", colours[labels])
        expected[i] = labels
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("frame_000000\nframe_000001\nframe_000002\n")
    return root, {"test": expected}, ["background", "cat", "dog"]


def write_cvat_xml(root):
    """Polygons and boxes by z_order: a box (dog, z 1) listed before a polygon (cat, z 0) stays on top."""
    expected, images = {}, []
    for i in range(2):
        save(root / "images" / f"img{i}.png", picture(i))
        dog = corners(10, 10 + i, 20, 30)
        images.append(f'<image id="{i}" name="img{i}.png" width="{W}" height="{H}">'
                      f'<box label="dog" xtl="{10 + i}" ytl="10" xbr="30" ybr="20" z_order="1" occluded="0"/>'
                      f'<polygon label="cat" points="{";".join(f"{x},{y}" for x, y in corners(0, 0, 24, 24))}" '
                      f'z_order="0" occluded="0"/><polyline label="cat" points="0,0;47,31" z_order="2"/></image>')
        want = box(np.zeros((H, W), np.uint8), 0, 0, 24, 24, 2)
        expected[i] = box(want, dog[0][1], dog[0][0], dog[2][1], dog[2][0], 1)
    meta = "<meta><task><labels><label><name>dog</name></label><label><name>cat</name></label></labels></task></meta>"
    (root / "annotations.xml").write_text(f'<?xml version="1.0"?><annotations><version>1.1</version>{meta}'
                                          f'{"".join(images)}</annotations>')
    return root, {"test": expected}, ["background", "dog", "cat"]


def write_labelstudio(root):
    """Task 1: a polygon (cat) and a later rectangle (dog), in percent; task 2: a brush (dog) in Label Studio's RLE;
    task 3: no regions (its size from the image)."""
    from label_studio_converter.brush import encode_rle

    expected, tasks = {}, []
    for i in range(3):
        save(root / "images" / f"photo{i}.png", picture(i))  # uploaded as 1a2b3c4d-photo{i}.png
        common = {"original_width": W, "original_height": H, "image_rotation": 0, "from_name": "label",
                  "to_name": "image"}
        want = np.zeros((H, W), np.uint8)
        if i == 0:
            percent = [[100 * x / W, 100 * y / H] for x, y in corners(4, 6, 28, 30)]
            results = [{**common, "id": "p1", "type": "polygonlabels",
                        "value": {"points": percent, "polygonlabels": ["cat"]}},
                       {**common, "id": "r1", "type": "rectanglelabels",
                        "value": {"x": 100 * 24 / W, "y": 100 * 8 / H, "width": 100 * 20 / W, "height": 50,
                                  "rotation": 0, "rectanglelabels": ["dog"]}}]
            box(want, 4, 6, 28, 30, 1), box(want, 8, 24, 24, 44, 2)
        elif i == 1:
            region = box(np.zeros((H, W), np.uint8), 5, 5, 25, 15, 1)
            rgba = np.zeros((H, W, 4), np.uint8)
            rgba[region > 0] = 255
            results = [{**common, "id": "b1", "type": "brushlabels",
                        "value": {"format": "rle", "rle": encode_rle(rgba.ravel()), "brushlabels": ["dog"]}}]
            want = box(want, 5, 5, 25, 15, 2)
        else:
            results = []
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/1/1a2b3c4d-photo{i}.png"},
                      "annotations": [{"id": 10 + i, "was_cancelled": False, "result": results}]})
        expected[i] = want
    (root / "project-1-at-2026-01-01.json").write_text(json.dumps(tasks))
    return root, {"test": expected}, ["background", "cat", "dog"]


def images_of(split):
    return list(split.examples.as_numpy_iterator())


def by_image(split):
    """{image index: mask} of a split's examples (images told apart by their mean)."""
    found = {}
    for image, mask in images_of(split):
        i = int(round((float(image.mean()) - 45) / 50))
        np.testing.assert_allclose(image.astype(float), picture(i).astype(float), atol=6)
        found[i] = mask
    return found


WRITERS = {  # case -> (format, writer); "test" is a split that gives every pair of a single set
    "coco": ("coco", write_coco), "cityscapes": ("cityscapes", write_cityscapes), "ade20k": ("ade20k", write_ade20k),
    "voc-sbd": ("voc-sbd", write_sbd), "labelme": ("labelme", write_labelme), "cvat": ("cvat", write_cvat_masks),
    "cvat-xml": ("cvat", write_cvat_xml), "labelstudio": ("labelstudio", write_labelstudio),
}


def test_every_registered_format_has_a_writer_here():
    assert sorted(formats.names()) == sorted({name for name, _ in WRITERS.values()})


@pytest.mark.parametrize("case", list(WRITERS))
def test_a_format_loads_pixel_for_pixel_by_detection_and_by_name(case, tmp_path):
    name, write = WRITERS[case]
    path, expected, names = write(tmp_path / case)
    assert formats.detect(str(path)) == name
    for split, want in expected.items():
        for options in ({}, {"format": name}):
            loaded = kseg.data.load(str(path), split, **options)
            assert loaded.class_names == names and loaded.num_classes == len(names)
            got = by_image(loaded)
            assert sorted(got) == sorted(want)
            for i, mask in want.items():
                np.testing.assert_array_equal(got[i], mask, err_msg=f"{case} {split} image {i}")


def test_a_single_set_holds_a_fifth_out_to_validate(tmp_path):
    path, expected, _ = write_cvat_masks(tmp_path / "cvat")
    train, val = (by_image(kseg.data.load(str(path), split)) for split in ("train", "val"))
    assert len(val) == 1 and sorted({**train, **val}) == sorted(expected["test"]) and not set(train) & set(val)


def test_a_coco_file_loads_on_its_own_and_packs_into_shards(tmp_path):
    path, expected, names = write_coco(tmp_path / "coco")
    file = str(path / "annotations" / "instances_train2017.json")
    assert formats.detect(file) == "coco"
    split = kseg.data.load(file, "test")  # one file is one set: "test" gives all of it
    got = by_image(split)
    for i, mask in expected["train"].items():
        np.testing.assert_array_equal(got[i], mask)
    from kseg.data import shards

    index = shards.pack(str(path), str(tmp_path / "shards"), shards=2, log=lambda line: None)
    assert {name: entry["count"] for name, entry in index["splits"].items()} == {"train": 3, "val": 1}
    packed = kseg.data.load(str(tmp_path / "shards"), "val")
    assert packed.class_names == names
    np.testing.assert_array_equal(by_image(packed)[3], expected["val"][3])


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def coco_with(tmp_path, change):
    """The COCO writer's dataset with `change(content)` applied to its train annotations."""
    path, _, _ = write_coco(tmp_path / "coco")
    file = path / "annotations" / "instances_train2017.json"
    content = json.loads(file.read_text())
    change(content)
    file.write_text(json.dumps(content))
    return path, str(file)


def test_bad_coco_annotations_are_one_line_naming_the_file(tmp_path):
    def outside(content):
        content["annotations"][0]["segmentation"] = [flat(corners(8, 10, 14, 60))]

    path, file = coco_with(tmp_path / "a", outside)
    with pytest.raises(DataError) as error:
        kseg.data.load(str(path), "train")
    assert f"{file}: annotation 1 (image 100): point (60, 8) lies outside the 48x32 image" in one_line(error)

    def unknown(content):
        content["annotations"][1]["category_id"] = 7

    path, file = coco_with(tmp_path / "b", unknown)
    with pytest.raises(DataError, match="annotation 2 .* unknown category id 7") as error:
        kseg.data.load(str(path), "train", format="coco")
    assert one_line(error).startswith(file)

    def missing(content):
        content["images"][2]["file_name"] = "gone.jpg"

    path, file = coco_with(tmp_path / "c", missing)
    with pytest.raises(DataError, match=r"image 102 names 'gone.jpg', which is not in") as error:
        kseg.data.load(str(path), "train")
    assert one_line(error).startswith(file)

    path, file = coco_with(tmp_path / "d", lambda content: None)
    with open(file, "a") as f:
        f.write("}")
    with pytest.raises(DataError, match=r"malformed JSON \(Extra data at line 1") as error:
        kseg.data.load(str(path), "train", format="coco")
    assert one_line(error).startswith(file)


def test_bad_annotations_of_other_formats_name_the_file(tmp_path):
    path, _, _ = write_labelme(tmp_path / "labelme")
    (path / "labels.txt").write_text("__ignore__\n_background_\ncat\n")  # no dog
    with pytest.raises(DataError) as error:
        kseg.data.load(str(path), "test")
    assert f"{path / 'a.json'}: shape 1 ('dog', rectangle): label is not in" in one_line(error)
    (path / "labels.txt").unlink()
    (path / "c.json").write_text('{"shapes": [')
    with pytest.raises(DataError, match=r"c.json: malformed JSON \(Expecting value at line 1, column 13\)"):
        kseg.data.load(str(path), "test", format="labelme")

    path, _, _ = write_cityscapes(tmp_path / "cityscapes")
    os.remove(path / "gtFine" / "val" / "frankfurt" / "frankfurt_000002_000019_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"frankfurt_000002_000019_leftImg8bit.png: no label ids \(expected "):
        kseg.data.load(str(path), "val")

    path, _, _ = write_cvat_masks(tmp_path / "cvat")
    (path / "labelmap.txt").write_text("background:0,0,0::\ncat:250,50,83::\n")  # no dog colour
    with pytest.raises(DataError, match=r"frame_000000.png: colour \(51, 221, 255\) is not in the colour table"):
        kseg.data.load(str(path), "test")

    path, _, _ = write_labelstudio(tmp_path / "labelstudio")
    export = path / "project-1-at-2026-01-01.json"
    tasks = json.loads(export.read_text())
    tasks[0]["annotations"][0]["result"][0]["value"]["points"][1] = [150, 20]
    export.write_text(json.dumps(tasks))
    with pytest.raises(DataError) as error:
        kseg.data.load(str(export), "test")
    assert f"{export}: task 1, region p1 (polygonlabels ['cat']): point (72, 6.4) lies outside" in one_line(error)


def test_data_check_lists_each_bad_annotation_as_a_problem(tmp_path):
    def two_bad(content):
        content["annotations"][0]["category_id"] = 5
        content["images"][1]["file_name"] = "gone.jpg"

    path, file = coco_with(tmp_path, two_bad)
    report = kseg.data.check(str(path))
    assert report.format == "coco" and len(report.problems) == 2 and len(report.pairs) == 2  # images 2 and 3 are good
    assert all(problem.startswith(file) for problem in report.problems)


def test_an_unknown_format_name_lists_the_formats(tmp_path):
    with pytest.raises(DataError, match="unknown data format 'yolo'; available: cityscapes, ade20k"):
        kseg.data.load(str(tmp_path), format="yolo")
    from kseg.training.config import FORMAT_HELP

    assert all(name in FORMAT_HELP for name in formats.names())  # the flag's help names every registered one


def test_data_check_on_coco_and_cityscapes(tmp_path, capsys):
    from kseg.cli import main

    coco, _, _ = write_coco(tmp_path / "coco")
    assert main(["data", "check", str(coco)]) == 0
    out = capsys.readouterr().out
    assert f"{coco} (coco): 4 image/mask pairs, 4 classes" in out and "classes: 0 background, 1 person, 2 car" in out
    assert "no problems found" in out
    cityscapes, _, _ = write_cityscapes(tmp_path / "cityscapes")
    assert main(["data", "check", str(cityscapes), "--format", "cityscapes"]) == 0
    out = capsys.readouterr().out
    assert "(cityscapes): 3 image/mask pairs, 19 classes" in out and "18 bicycle" in out
    assert "  ignore" in out  # unlabeled and static pixels
    os.remove(cityscapes / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png")
    assert main(["data", "check", str(cityscapes)]) == 1
    assert "aachen_000001_000019_leftImg8bit.png: no label ids" in capsys.readouterr().out


@pytest.mark.slow
def test_train_on_a_labelme_folder_named_by_format(tmp_path, capsys):
    from kseg.cli import main

    path, _, _ = write_labelme(tmp_path / "labelme")
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--format", "labelme", "--model", "unet", "--model-arg", "filters=4",
                 "--model-arg", "depth=2", "--crop-size", "32", "--batch-size", "2", "--steps", "4",
                 "--verbose", "0", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_format"] == "labelme" and config["num_classes"] == 3
    printed = capsys.readouterr().out
    assert "labelme (labelme) [train: 2 of 3 pairs, held out by file name]: 2 training, 1 validation images" in printed
    assert os.path.exists(out / "best.keras") and "kseg: trained" in printed
