"""Every registered architecture at its mobile configuration: size, compute, LiteRT latency and phone-GPU verdict.

    python benchmarks/mobile.py                          # 512x512, 2 threads, 10 timed runs: ~15 min on 2 cores
    python benchmarks/mobile.py --models ddrnet lraspp --runs 20
    python benchmarks/mobile.py --quick                  # tiny widths at 128x128: a smoke run (~2 min)

Each architecture is built with random weights at `MOBILE[name]` (builder arguments; {} is the architecture's
own default), 21 classes, and measured in a process of its own (TensorFlow's converter leaks memory per
conversion): parameters and GMACs at the size (`kseg.complexity`), a float32 and a full-int8 LiteRT file
(`kseg.deploy.litert.to_litert`, uint8 image in; int8 calibrated on 16 synthetic images), each file's size and
latency (`kseg.runtime.bench.benchmark`: XNNPACK, `--threads`, float32 image in, logits out), and the float32
file's GPU verdict (`kseg.deploy.gpu.check`: TensorFlow's analyzer and kseg's stricter check). Writes
`benchmarks/results/mobile.{md,json}` (`--quick`: `mobile_quick.*`), stating the host.
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


def measure(name: str, size: int, threads: int, runs: int, quick: bool) -> dict:
    """One architecture's row (run in a worker process)."""
    import kseg
    from kseg import complexity
    from kseg.deploy import litert, modes
    from kseg.runtime import bench

    kwargs = dict(kseg.models.architecture(name).tiny) if quick else dict(MOBILE.get(name, {}))
    model = kseg.models.get(name, CLASSES, **kwargs)
    report = complexity.complexity(model, (size, size))
    calibration = kseg.data.load("synthetic", "train", num_images=16, size=(size, size))
    row = {"model": name, "kwargs": kwargs, "params": report.params, "gmacs": report.macs / 1e9}
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("float32", "int8"):
            path = os.path.join(folder, f"{name}_{mode}.tflite")
            started = time.perf_counter()
            info = litert.to_litert(model, path, mode=mode, artifact=modes.Artifact((size, size)),
                                    calibration=calibration if mode == "int8" else None, num_calibration=16)
            convert_s = time.perf_counter() - started
            stats = bench.benchmark(path, threads=threads, runs=runs)
            row[mode] = {"size_mb": info["size_bytes"] / 1e6, "mean_ms": stats["mean_ms"], "p50_ms": stats["p50_ms"],
                         "convert_s": convert_s}
            if mode == "float32":
                row["gpu"] = {"compatible": info["gpu"]["compatible"],
                              "analyzer": info["gpu"]["analyzer"]["compatible"],
                              "kseg": info["gpu"]["kseg"]["compatible"],
                              "problems": sorted({p["op"] for p in info["gpu"]["problems"]})}
    return row


def table(rows):
    lines = ["| model | configuration | params M | GMACs | float32 MB | int8 MB | float32 ms | int8 ms "
             "| int8 / float32 | phone GPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error']} | | | | | | | | |")
            continue
        config = ", ".join(f"{k}={v}" for k, v in row["kwargs"].items()) or "default"
        gpu = "yes" if row["gpu"]["compatible"] else "no: " + ", ".join(row["gpu"]["problems"])
        lines.append(f"| {row['model']} | {config} | {row['params'] / 1e6:.2f} | {row['gmacs']:.2f} "
                     f"| {row['float32']['size_mb']:.2f} | {row['int8']['size_mb']:.2f} "
                     f"| {row['float32']['mean_ms']:.1f} | {row['int8']['mean_ms']:.1f} "
                     f"| {row['int8']['mean_ms'] / row['float32']['mean_ms']:.2f} | {gpu} |")
    return "\n".join(lines)


def main(argv=None):
    import kseg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=kseg.models.names(), choices=kseg.models.names())
    parser.add_argument("--size", type=int, default=None, help="input side (default 512; --quick: 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per file")
    parser.add_argument("--quick", action="store_true", help="tiny widths (the registry's) at 128x128")
    parser.add_argument("--note", default="", help="a sentence for the report's header (e.g. what else ran)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = args.size or (128 if args.quick else 512)
    if args.worker:
        print(json.dumps(measure(args.worker, size, args.threads, args.runs, args.quick)))
        return 0
    rows, started = [], time.perf_counter()
    for name in args.models:
        command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--size", str(size), "--threads",
                   str(args.threads), "--runs", str(args.runs), *(["--quick"] if args.quick else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        try:
            rows.append(json.loads(lines[-1]))
        except (IndexError, ValueError):
            error = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            rows.append({"model": name, "error": error})
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    machine = host()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": machine, "size": size, "classes": CLASSES,
              "threads": args.threads, "runs": args.runs, "quick": args.quick, "wall_s": time.perf_counter() - started,
              "note": args.note, "rows": rows}
    stem = "mobile_quick" if args.quick else "mobile"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    header = [f"# Mobile configurations at {size}x{size}, {CLASSES} classes, {args.threads} threads",
              "", f"{result['date']}, {machine['summary']}. Random weights; latency: mean of {args.runs} calls "
              "(`kseg.runtime.bench`, float32 image in, logits out; int8: uint8 input, calibrated on 16 synthetic "
              "images). Phone GPU: `kseg.deploy.gpu.check` on the float32 file (TensorFlow's analyzer and kseg's "
              "stricter check both pass).", ""]
    if args.note:
        header += [args.note, ""]
    text = "\n".join(header + [table(rows), ""])
    with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
