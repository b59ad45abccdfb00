"""End-to-end targets of the first milestone, measured in one run on the machine at hand.

1. DeepLabV3+ MobileNetV2 at 257x257 (21 classes, output stride 16): LiteRT float32 and full-int8
   latency at 1 and 2 threads (XNNPACK), file sizes, and the int8/float ratio (target <= 0.25 at 2 threads).
2. The input pipeline alone against the training step it feeds (target: the pipeline is faster).

    python benchmarks/e2e.py            # prints a table, writes benchmarks/results/e2e.{json,md}
    python benchmarks/e2e.py --quick    # fewer runs
"""

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import kseg  # noqa: E402
from kseg.deploy import modes, stage  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def litert_latency(size, runs, threads):
    model = kseg.models.deeplabv3plus(21, input_shape=(*size, 3), backbone="mobilenetv2", output_stride=16)
    calibration = kseg.data.from_synthetic("train", num_images=32, size=size)
    rows, tmp = {}, tempfile.mkdtemp()
    for mode in ("float32", "int8"):
        path = os.path.join(tmp, f"deeplabv3plus_mobilenetv2_{mode}.tflite")
        result = stage.export_artifact(model, path, mode=mode, artifact=modes.Artifact(size), train=calibration,
                                       threads=threads, runs=runs,
                                       settings=modes.ExportSettings(num_calibration=32))
        for t in threads:
            stats = result.latency[str(t)]
            rows[f"{mode}@{t}"] = {"mean_ms": stats["mean_ms"], "p50_ms": stats["p50_ms"],
                                   "p90_ms": stats["p90_ms"], "size_mb": result.info["size_bytes"] / 1e6,
                                   "ops": result.info["ops"]}
    return rows


def pipeline_versus_training(size, batch_size, steps):
    train = kseg.data.from_synthetic("train", num_images=256, size=size)
    batches = kseg.data.pipeline(train, batch_size, size=size, training=True).repeat()
    iterator = iter(batches)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps * 4):
        next(iterator)
    pipeline_rate = steps * 4 * batch_size / (time.perf_counter() - start)

    model = kseg.models.deeplabv3plus(6)
    model.compile(keras.optimizers.Adam(1e-3), loss=kseg.losses.CrossEntropy(),
                  metrics=[kseg.metrics.SegmentationMetrics(6)])
    x, y = next(iterator)
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    training_rate = steps * batch_size / (time.perf_counter() - start)
    return {"pipeline_images_per_s": pipeline_rate, "training_images_per_s": training_rate,
            "ratio": pipeline_rate / training_rate, "size": list(size), "batch_size": batch_size}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 10 if args.quick else 40
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "litert_257": litert_latency((257, 257), runs, (1, 2)),
               "pipeline": pipeline_versus_training((128, 128), 8, 5 if args.quick else 15)}
    lite = results["litert_257"]
    results["int8_over_float"] = {t: lite[f"int8@{t}"]["mean_ms"] / lite[f"float32@{t}"]["mean_ms"] for t in (1, 2)}

    lines = ["| DeepLabV3+ MobileNetV2 257x257, 21 classes | size MB | 1 thread ms | 2 threads ms |",
             "|---|---:|---:|---:|"]
    for mode in ("float32", "int8"):
        lines.append(f"| LiteRT {mode} | {lite[mode + '@1']['size_mb']:.2f} | {lite[mode + '@1']['mean_ms']:.1f} "
                     f"| {lite[mode + '@2']['mean_ms']:.1f} |")
    ratio = results["int8_over_float"]
    lines.append(f"| int8 / float32 | | {ratio[1]:.3f} | {ratio[2]:.3f} |")
    p = results["pipeline"]
    lines += ["", f"Input pipeline {p['pipeline_images_per_s']:.0f} images/s vs training step "
              f"{p['training_images_per_s']:.1f} images/s (DeepLabV3+ MobileNetV2, {p['size'][0]}x{p['size'][1]}, "
              f"batch {p['batch_size']}): {p['ratio']:.0f}x headroom.", f"Machine: {results['machine']}."]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(HERE, "results", "e2e.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(HERE, "results", "e2e.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
