"""Tiled against whole-picture inference (`kseg.Segmenter`): accuracy on real data, and the memory and time a
4000x3000 and a 10,000x10,000 picture take, for a `.keras` model and its int8 `.tflite`.

    pip install --no-deps stardist==0.9.2 && pip install tifffile
    python benchmarks/tiles.py [--time-budget 90] [--work /tmp/kseg-tiles]

Data: DSB2018 nuclei from stardist's wheel (`benchmarks/real_data.py`): the model trains on 128x128 crops of the
train tiles; it is scored on the val quadrant (one 256x256 picture, twice the crop), whole (Keras: at 256x256;
the int8 file: resized to its 128x128 input and back), tiled (`tile="auto"`: 128x128 windows) and tiled with
flip TTA. Big pictures are the 512x512 image repeated, each run in a fresh process that reports its seconds and
its peak resident memory above what it held once the model was loaded and the picture made (ru_maxrss).
Writes benchmarks/results/tiles.md and tiles.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CROP = 128
BIG = {"4000x3000": (3000, 4000), "10000x10000": (10_000, 10_000)}
RUN_BIG = """
import resource, sys, time
import numpy as np, tifffile, kseg
path, height, width, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
segmenter = kseg.Segmenter(path, tile="auto", threads=2)
tile = np.asarray(tifffile.imread(source), np.uint8)
picture = np.empty((height, width, 3), np.uint8)  # filled in place: no temporary raises the peak before the run
for y in range(0, height, 512):
    for x in range(0, width, 512):
        block = tile[:height - y, :width - x]
        picture[y:y + block.shape[0], x:x + block.shape[1]] = block[..., None]
segmenter.predict(picture[:256, :256])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
labels = segmenter.predict(picture)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_growth_mb": (after - before) / 1024, "windows":
                  len(segmenter.plan(picture.shape[:2]).windows), "picture_mb": picture.nbytes / 1e6}))
""".replace("import resource", "import json, resource")


def kseg_cli(*args):
    subprocess.run([sys.executable, "-m", "kseg.cli", *args], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def quadrant(data, out):
    """The val split's four 128x128 tiles put back together as one 256x256 picture (and mask)."""
    from PIL import Image

    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, "val", sub), exist_ok=True)
        parts = {name: np.asarray(Image.open(os.path.join(data, "val", sub, name)))
                 for name in sorted(os.listdir(os.path.join(data, "val", sub)))}
        rows = [np.concatenate([parts[f"dsb_r{r:03d}_c{c:03d}.png"] for c in (256, 384)], axis=1) for r in (256, 384)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.join(out, "val", sub, "quadrant.png"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/kseg-tiles")
    p.add_argument("--time-budget", type=int, default=90, help="training seconds")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]  # other jobs on the machine share its cores: timings are ratios within this run
    sys.path.insert(0, HERE)
    import real_data

    import kseg

    data = os.path.join(args.work, "dsb2018_nuclei")
    real_data.materialize("dsb2018_nuclei", data)
    run, export = os.path.join(args.work, "run"), os.path.join(args.work, "export")
    if not os.path.exists(os.path.join(run, "best.keras")):
        kseg_cli("train", "--data", data, "--crop-size", str(CROP), "--time-budget", str(args.time_budget),
                 "--out", run)
    artifacts = {"keras": os.path.join(run, "best.keras"), "int8 tflite": os.path.join(export, "best_int8.tflite")}
    if not os.path.exists(artifacts["int8 tflite"]):
        kseg_cli("export", artifacts["keras"], "--out", export, "--modes", "int8", "--input-size", str(CROP),
                 "--calibration-data", data)
    val = kseg.data.load(quadrant(data, os.path.join(args.work, "quadrant")), "val", num_classes=2)
    ways = {"whole": {}, "tiles": {"tile": "auto"}, "tiles + flip": {"tile": "auto", "tta": "flip"}}
    scores = {name: {way: kseg.runtime.evaluation.evaluate(path, val, num_threads=2, progress=False,
                                                           **options).scores["class_dice"][1]
                     for way, options in ways.items()} for name, path in artifacts.items()}
    source = real_data._package_files("dsb2018_nuclei")[0]
    big = {name: {size: json.loads(subprocess.run(
        [sys.executable, "-c", RUN_BIG, path, str(h), str(w), source], check=True, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.strip().splitlines()[-1])
        for size, (h, w) in BIG.items()} for name, path in artifacts.items()}
    host = {"cpu": _cpu(), "avx512": "avx512f" in _cpuinfo(), "python": platform.python_version(),
            "load_at_start": load}
    result = {"data": "DSB2018 nuclei val quadrant (256x256), foreground Dice", "crop": CROP, "scores": scores,
              "big": big, "host": host}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "tiles.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Tiled vs whole-picture inference ({host['cpu']}, AVX-512: {host['avx512']}, 2 threads)", "",
             f"Model: `kseg train --crop-size {CROP} --time-budget {args.time_budget}` on DSB2018 nuclei (stardist "
             "wheel); foreground Dice on the val quadrant (256x256, twice the crop).", "",
             "| artifact | " + " | ".join(ways) + " |", "|---|" + "---:|" * len(ways)]
    lines += [f"| {name} | " + " | ".join(f"{100 * scores[name][way]:.2f}" for way in ways) + " |" for name in scores]
    lines += ["", "Big pictures (`tile=\"auto\"`: 128x128 windows, overlap 0.25), each in a fresh process: seconds, "
              "peak resident memory above the loaded model and picture (ru_maxrss), windows.", "",
              "| artifact | picture | seconds | peak growth MB | picture MB | windows |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {size} | {r['seconds']:.1f} | {r['peak_growth_mb']:.0f} | {r['picture_mb']:.0f} | "
              f"{r['windows']} |" for name, sizes in big.items() for size, r in sizes.items()]
    with open(os.path.join(HERE, "results", "tiles.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpuinfo():
    with open("/proc/cpuinfo") as f:
        return f.read()


def _cpu():
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor()


if __name__ == "__main__":
    main()
