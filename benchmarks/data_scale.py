"""Data at scale: start-up of a large folder (cold check against cached) and what the training pipeline
reads per second from the folder and from its TFRecord shards (`kseg data pack`).

    python benchmarks/data_scale.py                         # 10,000 synthetic 128x128 pairs (~5 min, 2 cores)
    python benchmarks/data_scale.py --images 2000 --batches 100

Writes benchmarks/results/data_scale.{json,md}. Each measurement runs in its own process (no warm
page cache of Python objects, one TensorFlow start each); the folder's files are in the OS page cache
for every run alike (the cold check is cold for kseg's cache, not for the disk). Pipelines are timed
as training reads them: shuffle, random scale, crop, flips, batches of 16 crops of 128x128.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from peers import venvs  # noqa: E402


def child(args):
    """One measurement, in this process; prints a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import kseg
    from kseg.data import folder
    from kseg.training.config import AUGMENTATIONS

    if args.measure == "check":
        started = time.perf_counter()
        report = kseg.data.check(args.data)
        print(json.dumps({"seconds": time.perf_counter() - started, "pairs": len(report.pairs)}))
        return
    if args.measure == "folder-streamed":
        folder.IN_MEMORY_BYTES = 0  # as a folder too large to decode up front is read
    started = time.perf_counter()
    split = kseg.data.load(args.data, "train")
    load_seconds = time.perf_counter() - started
    batches = kseg.data.pipeline(split, 16, size=(128, 128), training=True, repeat=True,
                                 **AUGMENTATIONS["natural"]).as_numpy_iterator()
    for _ in range(10):  # warm-up: tracing, autotune, the first files
        next(batches)
    started = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    seconds = time.perf_counter() - started
    print(json.dumps({"load_seconds": load_seconds, "images_per_second": 16 * args.batches / seconds}))


def run(measure, data, batches, env):
    result = subprocess.run([sys.executable, __file__, "--child", measure, "--data", data, "--batches", str(batches)],
                            capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{measure} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--work", default=venvs.work_dir("data-scale"),
                        help="data, shards and cache (under $KSEG_BENCH_CACHE when set)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--child", dest="measure")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.measure:
        return child(args)

    data, shards, cache = (os.path.join(args.work, name) for name in ("data", "shards", "cache"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KSEG_CACHE_DIR": cache}
    if not os.path.exists(os.path.join(data, "val")):
        print(f"writing {args.images} synthetic pairs to {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "kseg.cli", "data", "synth", data, "--num-images", str(args.images),
                        "--size", str(args.size)], check=True, env=env, capture_output=True)
    if os.path.exists(cache):
        subprocess.run(["rm", "-rf", cache], check=True)
    time.sleep(2.5)  # files younger than the cache's "recent" window are never cached
    train = os.path.join(data, "train")
    cold = run("check", train, 0, env)
    cached = run("check", train, 0, env)
    print(f"check {cold['pairs']} pairs: cold {cold['seconds']:.2f} s, cached {cached['seconds']:.2f} s "
          f"({cold['seconds'] / cached['seconds']:.1f}x)", flush=True)

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kseg.cli", "data", "pack", data, "--out", shards, "--shards",
                    str(args.shards)], check=True, env=env, capture_output=True)
    pack_seconds = time.perf_counter() - started
    reads = {name: run(name, path, args.batches, env) for name, path in
             (("folder", data), ("folder-streamed", data), ("shards", shards))}
    for name, result in reads.items():
        print(f"{name}: {result['images_per_second']:.0f} images/s (load {result['load_seconds']:.1f} s)", flush=True)

    results = {"images": args.images, "size": args.size, "check_cold_s": cold["seconds"],
               "check_cached_s": cached["seconds"], "pack_s": pack_seconds, "reads": reads,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "data_scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Data at scale ({args.images} synthetic {args.size}x{args.size} pairs, {results['machine']})", "",
             "| start-up: folder check | seconds |", "|---|---:|",
             f"| cold (every mask decoded) | {cold['seconds']:.2f} |",
             f"| cached (unchanged folder) | {cached['seconds']:.2f} |",
             f"| ratio | {cold['seconds'] / cached['seconds']:.1f}x |", "",
             f"Packing into {args.shards} shards took {pack_seconds:.0f} s (check included).", "",
             "| training pipeline reads from | images/s | load s | vs streamed folder |", "|---|---:|---:|---:|"]
    base = reads["folder-streamed"]["images_per_second"]
    for name, result in reads.items():
        lines.append(f"| {name} | {result['images_per_second']:.0f} | {result['load_seconds']:.1f} | "
                     f"{result['images_per_second'] / base:.2f}x |")
    lines += ["", "folder: a folder that fits in 1 GiB decoded is decoded once at load (the load column); "
              "folder-streamed: decoded as read (larger folders); shards: `kseg data pack` TFRecords, read "
              "interleaved."]
    with open(os.path.join(args.out, "data_scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
