"""Every registered architecture at its mobile configuration: size, compute, LiteRT latency, phone-GPU verdict and
what it learns in a fixed time.

    python benchmarks/mobile.py                          # 512x512, 1 and 2 threads, 10 timed runs: ~25 min on 2 cores
    python benchmarks/mobile.py --models ddrnet lraspp --runs 20 --out /tmp/mobile
    python benchmarks/mobile.py --train synthetic --budget 120   # adds val mIoU after `kseg train`, and the plot
    python benchmarks/mobile.py --quick                  # tiny widths at 128x128: a smoke run (~2 min)

Each architecture is built with random weights at `MOBILE[name]` (builder arguments; {} is the architecture's own
default; `VARIANTS` names further configurations, e.g. `--models lraspp-rf2`), 21 classes, and measured in a process
of its own (TensorFlow's converter leaks memory per conversion): parameters, and GMACs at SxS and 2SxS (512x512 and
1024x512: a camera frame and a Cityscapes-like half frame; `kseg.complexity`), a float32 and a full-int8 LiteRT file
(`kseg.deploy.litert.to_litert`, uint8 image in; int8 calibrated on 16 synthetic images, the batch-norm statistics
first taken from 4 of them by `kseg.models.statistics` so that the int8 scales are a trained model's), each file's
size and latency at every `--threads` count (`kseg.runtime.bench.benchmark`: XNNPACK, float32 image in, logits out),
and the float32 file's GPU verdict (`kseg.deploy.gpu.check`: TensorFlow's analyzer and kseg's stricter check). With
`--train DATASET...` each architecture is also trained by `kseg train --data D --model NAME --time-budget B` (its
mobile configuration as `--model-arg`s, every other setting kseg's) on the learning benchmark's datasets
(`learning.prepare`: the synthetic set, or a real one from the data venv) and scored by its best val mIoU; the plot
draws int8 latency against that mIoU with the Pareto front (no slower model scores higher). Writes
`mobile.{md,json,png}` (`--quick`: `mobile_quick.*`) to `benchmarks/results/` or `--out`, stating the host.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import learning  # noqa: E402  (the learning benchmark's datasets)

CLASSES = 21
# Builder arguments of each architecture's mobile configuration; an architecture not named here is built with
# its own defaults (those already are the mobile designs: DDRNet-23-slim, LR-ASPP MobileNetV3-Large,
# DeepLabV3+ MobileNetV2 at output stride 16, SegFormer-B0).
MOBILE = {
    "deeplabv3": {"backbone": "mobilenetv2"},  # output stride 16, as torchvision's deeplabv3_mobilenet_v3
    "fcn8s": {"backbone": "vgg16_bn", "backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "fcn16s": {"backbone": "vgg16_bn", "backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "fcn32s": {"backbone": "vgg16_bn", "backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "hrnet": {"variant": "w18_small_v1"},  # HRNetV2-W18-Small-v1, the paper's smallest
    "refinenet": {"backbone": "mobilenetv2", "filters": (256, 128, 128, 128)},  # light-weight RefineNet's encoder
    "segnet": {"width": 0.25},
    "unet": {"filters": 16, "depth": 4},
}
# Further configurations measured by name (--models), as (architecture, builder arguments).
VARIANTS = {"lraspp-rf2": ("lraspp", {"backbone_kwargs": {"reduced_tail": True}})}  # the paper's "RF2" tail


def host():
    """The CPU model, its cores and whether it has AVX-512 (VNNI): every timing is stated with it."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1)
    except (OSError, AttributeError):
        pass
    avx512 = "avx512f" in flags.split()
    vnni = "avx512_vnni" in flags.split()
    return {"cpu": model, "cores": os.cpu_count(), "avx512": avx512, "vnni": vnni,
            "summary": f"{model}, {os.cpu_count()} cores, " + ("AVX-512" + (" + VNNI" if vnni else "") if avx512
                                                                else "AVX2 only (no AVX-512)")}


def measure(label: str, size: int, threads: list, runs: int, quick: bool, ops: bool = False) -> dict:
    """One architecture's row (run in a worker process)."""
    import numpy as np

    import kseg
    from kseg import complexity
    from kseg.deploy import litert, modes
    from kseg.models import statistics
    from kseg.runtime import bench, profiler

    name, variant = VARIANTS.get(label, (label, {}))
    kwargs = dict(kseg.models.architecture(name).tiny) if quick else dict(MOBILE.get(name, {}))
    for key, value in variant.items():  # a variant's options on top (one level deep: backbone_kwargs)
        kwargs[key] = {**kwargs.get(key, {}), **value} if isinstance(value, dict) else value
    model = kseg.models.get(name, CLASSES, **kwargs)
    square, wide = complexity.complexity(model, (size, size)), complexity.complexity(model, (size, 2 * size))
    calibration = kseg.data.load("synthetic", "train", num_images=16, size=(size, size))
    # A trained model's activation ranges, not random weights' (which can push int8 ops off XNNPACK):
    # see kseg.models.statistics.
    images = np.concatenate(litert.calibration_images(calibration, (size, size), count=4))
    statistics.set_batch_norm_statistics(model, images)
    row = {"label": label, "model": name, "kwargs": kwargs, "params": square.params, "gmacs": square.macs / 1e9,
           "gmacs_wide": wide.macs / 1e9}
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("float32", "int8"):
            path = os.path.join(folder, f"{name}_{mode}.tflite")
            started = time.perf_counter()
            info = litert.to_litert(model, path, mode=mode, artifact=modes.Artifact((size, size)),
                                    calibration=calibration if mode == "int8" else None, num_calibration=16)
            row[mode] = {"size_mb": info["size_bytes"] / 1e6, "convert_s": time.perf_counter() - started}
            for count in threads:
                stats = bench.benchmark(path, threads=count, runs=runs)
                row[mode][f"{count}t"] = {"mean_ms": stats["mean_ms"], "p50_ms": stats["p50_ms"],
                                          "invoke_ms": stats["invoke"]["mean_ms"]}
            if ops and mode == "int8":  # where the int8 call's time goes, at the last thread count
                row[mode]["ops"] = profiler.op_times(path, num_threads=threads[-1], runs=runs)
            if mode == "float32":
                row["gpu"] = {"compatible": info["gpu"]["compatible"],
                              "analyzer": info["gpu"]["analyzer"]["compatible"],
                              "kseg": info["gpu"]["kseg"]["compatible"],
                              "problems": sorted({p["op"] for p in info["gpu"]["problems"]})}
    return row


def op_profiles(rows, threads, top=6):
    """Markdown lines: each profiled row's slowest int8 op types (ms per call, node count), LiteRT's names."""
    profiled = [row for row in rows if row.get("int8", {}).get("ops")]
    if not profiled:
        return []
    lines = [f"Where the int8 call's time goes ({threads} threads, LiteRT's profiler, which slows the call: read "
             "the shares; `Delegate/` ops run on XNNPACK):", ""]
    for row in profiled:
        ops = row["int8"]["ops"]
        total = sum(op["ms"] for op in ops)
        parts = [f"{op['op'].removeprefix('Delegate/')} {op['ms']:.2f} ({op['nodes']})" for op in ops[:top]]
        lines.append(f"- {row['label']}: {total:.2f} ms in {sum(op['nodes'] for op in ops)} nodes; " + ", ".join(parts))
    return lines + [""]


def train(name: str, kwargs: dict, data: str, budget: float, out: str) -> dict:
    """Val mIoU of `kseg train` on `data` within `budget` seconds, the architecture at its mobile configuration."""
    model_args = [arg for key, value in kwargs.items() for arg in ("--model-arg", f"{key}={json.dumps(value)}")]
    command = [sys.executable, "-m", "kseg.cli", "train", "--data", data, "--model", name, *model_args,
               "--time-budget", str(budget), "--out", out, "--verbose", "0"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=learning.ENV)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"miou": 100 * summary["best_val_miou"], "steps": summary["steps"],
            "wall_s": time.perf_counter() - started}


def pareto(points):
    """The points no other point beats on both axes (lower latency, higher mIoU), by latency."""
    front, best = [], float("-inf")
    for latency, miou, label in sorted(points):
        if miou > best:
            front.append((latency, miou, label))
            best = miou
    return front


def plot(rows, datasets, threads, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        points = [(row["int8"][f"{threads}t"]["mean_ms"], row["train"][dataset]["miou"], row["label"])
                  for row in rows if "error" not in row and "miou" in row.get("train", {}).get(dataset, {})]
        for latency, miou, label in points:
            axis.scatter(latency, miou, color="tab:blue")
            axis.annotate(label, (latency, miou), fontsize=8, xytext=(3, 3), textcoords="offset points")
        front = pareto(points)
        if front:
            axis.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red",
                      label="Pareto front")
            axis.legend(loc="lower right")
        axis.set(xscale="log", xlabel=f"int8 LiteRT ms ({threads} threads)", ylabel="val mIoU %", title=dataset)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(rows, threads, datasets=()):
    cells = [f"float32 ms {t}t | int8 ms {t}t" for t in threads]
    lines = ["| model | configuration | params M | GMACs | GMACs wide | float32 MB | int8 MB | " + " | ".join(cells)
             + f" | int8 invoke ms {threads[-1]}t | int8 / float32 | phone GPU |"
             + "".join(f" mIoU {d} |" for d in datasets)]
    lines.append("|---" * (10 + 2 * len(threads) + len(datasets)) + "|")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | failed: {row['error']} |")
            continue
        config = ", ".join(f"{k}={v}" for k, v in row["kwargs"].items()) or "default"
        gpu = "yes" if row["gpu"]["compatible"] else "no: " + ", ".join(row["gpu"]["problems"])
        times = " | ".join(f"{row['float32'][f'{t}t']['mean_ms']:.1f} | {row['int8'][f'{t}t']['mean_ms']:.1f}"
                           for t in threads)
        last = f"{threads[-1]}t"
        scores = "".join(f" {row.get('train', {}).get(d, {}).get('miou', float('nan')):.1f} |" for d in datasets)
        lines.append(f"| {row['label']} | {config} | {row['params'] / 1e6:.2f} | {row['gmacs']:.2f} "
                     f"| {row['gmacs_wide']:.2f} | {row['float32']['size_mb']:.2f} | {row['int8']['size_mb']:.2f} "
                     f"| {times} | {row['int8'][last].get('invoke_ms', float('nan')):.1f} "
                     f"| {row['int8'][last]['mean_ms'] / row['float32'][last]['mean_ms']:.2f} | {gpu} |"
                     + scores)
    return "\n".join(lines)


def main(argv=None):
    import kseg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=kseg.models.names(), choices=[*kseg.models.names(), *VARIANTS])
    parser.add_argument("--size", type=int, default=None, help="input side (default 512; --quick: 128)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts timed (default 1 2)")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per file")
    parser.add_argument("--quick", action="store_true", help="tiny widths (the registry's) at 128x128")
    parser.add_argument("--train", nargs="*", default=[], metavar="DATASET",
                        help="also train each architecture on these learning-benchmark datasets (e.g. synthetic)")
    parser.add_argument("--budget", type=float, default=120, help="seconds of kseg train per model and dataset")
    parser.add_argument("--work", default=None, help="data and run folders (default: the bench cache's work/mobile)")
    parser.add_argument("--out", default=RESULTS, help="folder for mobile.{md,json,png}")
    parser.add_argument("--note", default="", help="a sentence for the report's header (e.g. what else ran)")
    parser.add_argument("--ops", action="store_true", help="also profile each int8 file's op types (LiteRT's profiler)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = args.size or (128 if args.quick else 512)
    if args.worker:
        print(json.dumps(measure(args.worker, size, args.threads, args.runs, args.quick, args.ops)))
        return 0
    work = args.work or learning.venvs.work_dir("mobile")
    folders = {}
    for dataset in args.train:
        folders[dataset], why = learning.prepare(dataset, work)
        if why:
            print(f"mobile: skipping dataset {dataset}: {why}", flush=True)
    datasets = [d for d in args.train if folders.get(d)]
    rows, started = [], time.perf_counter()
    for name in args.models:
        command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--size", str(size), "--threads",
                   *map(str, args.threads), "--runs", str(args.runs), *(["--quick"] if args.quick else []),
                   *(["--ops"] if args.ops else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        try:
            row = json.loads(lines[-1])
        except (IndexError, ValueError):
            row = {"label": name, "model": name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
        if "error" not in row and datasets:
            row["train"] = {d: train(row["model"], row["kwargs"], folders[d], args.budget,
                                     os.path.join(work, "runs", d, name)) for d in datasets}
        rows.append(row)
        print(table(rows[-1:], args.threads, datasets).splitlines()[-1], flush=True)
    machine = host()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": machine, "size": size, "classes": CLASSES,
              "threads": args.threads, "runs": args.runs, "quick": args.quick, "budget_s": args.budget,
              "datasets": datasets, "wall_s": time.perf_counter() - started, "note": args.note, "rows": rows}
    stem = "mobile_quick" if args.quick else "mobile"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    header = [f"# Mobile configurations at {size}x{size}, {CLASSES} classes", "",
              f"{result['date']}, {machine['summary']}. Random weights; GMACs at {size}x{size} and, wide, "
              f"{size}x{2 * size}; latency: mean of {args.runs} calls at {', '.join(map(str, args.threads))} "
              "thread(s) (`kseg.runtime.bench`, float32 image in, logits out; int8: uint8 input, calibrated on 16 "
              "synthetic images); invoke: the interpreter's call alone, what LiteRT's benchmark_model times (the "
              "rest is numpy's quantizing of the image and dequantizing of the logits). Phone GPU: "
              "`kseg.deploy.gpu.check` on the float32 file (TensorFlow's analyzer "
              "and kseg's stricter check both pass)."
              + (f" mIoU: best val mIoU of `kseg train --time-budget {args.budget:g}` (trained weights, not the "
                 "random ones timed)." if datasets else ""), ""]
    if args.note:
        header += [args.note, ""]
    text = "\n".join(header + [table(rows, args.threads, datasets), ""] + op_profiles(rows, args.threads[-1]))
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(text)
    if datasets:
        plot(rows, datasets, args.threads[-1], os.path.join(args.out, stem + ".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
