"""kseg's LiteRT files against segmentation_models_pytorch in eager PyTorch: DeepLabV3+ MobileNetV2 latency.

    python benchmarks/peers/make_venvs.py smp               # once: SMP's venv
    python benchmarks/edge_latency.py                       # 512x512, 2 threads, 3 rounds: ~90 s on 2 cores
    python benchmarks/edge_latency.py --size 257 --threads 1 --rounds 5

Issue 10's latency target: at 512x512 and 2 threads, kseg's int8 LiteRT at most 0.2x and its float32 LiteRT
at most 0.4x of SMP's eager PyTorch latency for the same architecture, measured in the same run.

- kseg: `kseg.models.deeplabv3plus(21)` (MobileNetV2, output stride 16, the paper's decoder), random weights,
  exported at the size by `kseg.deploy.litert.to_litert` as float32 and full int8 (uint8 image in, calibrated on 16
  synthetic images), each timed by `kseg.runtime.bench.benchmark(..., fresh_process=True)`: XNNPACK, `threads`
  threads, one float32 image in and float32 logits out (the int8 call includes quantizing the image and
  dequantizing the logits), and its interpreter's invoke alone.
- SMP: `benchmarks/peers/smp_latency.py` in its own venv (`--smp-python`, default $KSEG_SMP_PYTHON or
  the venv `benchmarks/peers/make_venvs.py smp` creates):
  `smp.DeepLabV3Plus("mobilenet_v2", encoder_output_stride=16, classes=21)`,
  eval, `torch.inference_mode()`, `torch.set_num_threads(threads)`, logits out.

Also, as an app that draws labels runs them: kseg's int8 with the argmax inside (`output="labels"`) against
SMP's logits plus `argmax(1)`. Each round times SMP, then each kseg file, each in a fresh process; ratios are per round
(kseg mean / SMP mean), and the reported ratio is the median round's. Writes
`benchmarks/results/edge_latency.{json,md}`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from peers import venvs  # noqa: E402

TARGETS = {"float32": 0.4, "int8": 0.2}  # issue 10: at most this share of SMP's eager latency (logits)
LABELS = "int8_labels"  # full int8 with the argmax inside (`--output labels`): what an app that draws labels runs


def export_kseg(size, classes, folder):
    import kseg
    from kseg.deploy import litert, modes

    model = kseg.models.deeplabv3plus(classes)
    calibration = kseg.data.load("synthetic", "train", num_images=16, size=(size, size))
    names = [f"class_{i}" for i in range(classes)]
    paths = {}
    for name, mode, output in (("float32", "float32", "logits"), ("int8", "int8", "logits"),
                               (LABELS, "int8", "labels")):
        paths[name] = os.path.join(folder, f"deeplabv3plus_{name}.tflite")
        litert.to_litert(model, paths[name], mode=mode, artifact=modes.Artifact((size, size), output=output),
                         origin=modes.Origin(class_names=tuple(names)), calibration=calibration, num_calibration=16)
    return paths, model.count_params()


def time_smp(python, size, threads, runs):
    script = os.path.join(HERE, "peers", "smp_latency.py")
    done = subprocess.run([python, script, "--size", str(size), "--threads", str(threads), "--runs", str(runs)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"smp_latency.py failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=21)
    venvs.add_argument(parser, "smp", "runs peers/smp_latency.py")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if not os.path.exists(args.smp_python):
        raise SystemExit(venvs.missing("smp", args.smp_python))

    from kseg.runtime import bench

    started = time.time()
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        paths, params = export_kseg(args.size, args.classes, folder)
        sizes = {mode: os.path.getsize(path) for mode, path in paths.items()}
        for index in range(args.rounds):
            row = {"smp": time_smp(args.smp_python, args.size, args.threads, args.runs)}
            for mode, path in paths.items():
                stats = bench.benchmark(path, threads=args.threads, runs=args.runs, fresh_process=True)
                row[mode] = {"mean_ms": stats["mean_ms"], "p50_ms": stats["p50_ms"],
                             "invoke_ms": stats["invoke"]["mean_ms"], "init_ms": stats["init_ms"]}
            for mode in TARGETS:
                row[f"{mode}_ratio"] = row[mode]["mean_ms"] / row["smp"]["mean_ms"]
            row[f"{LABELS}_ratio"] = row[LABELS]["mean_ms"] / row["smp"]["labels_mean_ms"]
            rounds.append(row)
            print(f"round {index + 1}: SMP {row['smp']['mean_ms']:.1f} ms, "
                  + ", ".join(f"{mode} {row[mode]['mean_ms']:.1f} ms ({row[f'{mode}_ratio']:.3f}x)"
                              for mode in (*TARGETS, LABELS)), flush=True)

    def median_round(mode):
        ordered = sorted(rounds, key=lambda row: row[f"{mode}_ratio"])
        return ordered[len(ordered) // 2]

    summary = {}
    for mode, target in TARGETS.items():
        row = median_round(mode)
        summary[mode] = {"ratio": row[f"{mode}_ratio"], "target": target, "met": row[f"{mode}_ratio"] <= target,
                         "kseg_ms": row[mode]["mean_ms"], "invoke_ms": row[mode]["invoke_ms"],
                         "smp_ms": row["smp"]["mean_ms"], "size_bytes": sizes[mode]}
    row = median_round(LABELS)
    summary[LABELS] = {"ratio": row[f"{LABELS}_ratio"], "kseg_ms": row[LABELS]["mean_ms"],
                       "smp_ms": row["smp"]["labels_mean_ms"], "size_bytes": sizes[LABELS]}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "size": args.size, "threads": args.threads, "runs": args.runs, "classes": args.classes,
              "kseg_params": params, "rounds": rounds, "summary": summary,
              "wall_s": round(time.time() - started, 1)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "edge_latency.json"), "w") as f:
        json.dump(result, f, indent=2)
    smp_params = rounds[0]["smp"]["params"]
    lines = ["# DeepLabV3+ MobileNetV2: kseg LiteRT against segmentation_models_pytorch (eager PyTorch)", "",
             f"{result['date']}, {result['machine']}; {args.size}x{args.size}, {args.classes} classes, "
             f"{args.threads} threads, mean of {args.runs} calls, {args.rounds} rounds (each runtime in a fresh "
             f"process); parameters: kseg {params / 1e6:.2f} M, SMP {smp_params / 1e6:.2f} M; "
             f"{', '.join(f'{k} {v}' for k, v in rounds[0]['smp']['versions'].items())}.", "",
             "| round | SMP eager ms | kseg float32 ms (invoke) | float32 / SMP | kseg int8 ms (invoke) | int8 / SMP "
             "| SMP + argmax ms | kseg int8 labels ms | labels / SMP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for index, row in enumerate(rounds, 1):
        lines.append(f"| {index} | {row['smp']['mean_ms']:.1f} | {row['float32']['mean_ms']:.1f} "
                     f"({row['float32']['invoke_ms']:.1f}) | {row['float32_ratio']:.3f}x | "
                     f"{row['int8']['mean_ms']:.1f} ({row['int8']['invoke_ms']:.1f}) | {row['int8_ratio']:.3f}x | "
                     f"{row['smp']['labels_mean_ms']:.1f} | {row[LABELS]['mean_ms']:.1f} | "
                     f"{row[f'{LABELS}_ratio']:.3f}x |")
    lines += ["", "Median round against issue 10's targets (logits): "
              + "; ".join(f"{mode} {summary[mode]['ratio']:.3f}x (target <= {target}x: "
                          f"{'met' if summary[mode]['met'] else 'NOT met'})" for mode, target in TARGETS.items())
              + f"; label maps (int8 with the argmax inside, against SMP's logits + argmax): "
              f"{summary[LABELS]['ratio']:.3f}x.", "",
              "kseg's call is what an app makes: float32 image in, float32 logits out (int8: quantize the image, "
              "dequantize the logits; labels: a uint8 label map out); invoke is the interpreter alone.", "",
              f"`python benchmarks/edge_latency.py` ({result['wall_s']:.0f} s in all)."]
    with open(os.path.join(args.out, "edge_latency.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
