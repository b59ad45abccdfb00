"""The export stage: trained checkpoints in, LiteRT artifacts out, each evaluated and timed, with a manifest.

    python export/run.py runs/a/best.keras runs/b/best.keras --out artifacts --modes float32 int8 \\
        --input-size 128 --data synthetic

Writes `OUT/<checkpoint>_<mode>.tflite` (+ JSON sidecars), `OUT/manifest.json` and `OUT/report.md`.
Every file is written to a temporary name and renamed, so an interrupted export leaves no half file.
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(checkpoints, out, modes, input_size, data, threads=2, runs=20):
    import kseg
    from kseg import bench, evaluation, export

    calibration = kseg.data.load(data, "train")
    val = kseg.data.load(data, "val")
    entries = []
    for checkpoint in checkpoints:
        model = evaluation.KerasPredictor(checkpoint).model
        stem = os.path.basename(os.path.dirname(os.path.abspath(checkpoint))) + "_" + os.path.splitext(
            os.path.basename(checkpoint))[0]
        for mode in modes:
            path = os.path.join(out, f"{stem}_{mode}.tflite")
            info = export.to_litert(model, path, mode, input_size=input_size, calibration=calibration,
                                    class_names=calibration.class_names, source=checkpoint)
            scores = evaluation.evaluate(path, val, progress=False).scores
            latency = bench.benchmark(path, threads=threads, runs=runs)
            entries.append({"checkpoint": checkpoint, "mode": mode, "artifact": os.path.basename(path),
                            "size_bytes": info["size_bytes"], "miou": scores["miou"],
                            "latency_ms": latency["mean_ms"], "threads": threads, "ops": info["ops"]})
            print(f"{path}: mIoU {100 * scores['miou']:.2f}, {latency['mean_ms']:.2f} ms, "
                  f"{info['size_bytes'] / 1e6:.2f} MB", flush=True)
    _write(os.path.join(out, "manifest.json"), json.dumps({"input_size": list(input_size), "data": data,
                                                           "artifacts": entries}, indent=2))
    lines = ["| artifact | mode | size (MB) | mIoU | latency (ms) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {e['artifact']} | {e['mode']} | {e['size_bytes'] / 1e6:.2f} | {100 * e['miou']:.2f} "
              f"| {e['latency_ms']:.2f} |" for e in entries]
    _write(os.path.join(out, "report.md"), "# Export report\n\n" + "\n".join(lines) + "\n")
    return entries


def _write(path, text):
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(path)), delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help=".keras files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--data", default="synthetic", help="calibration (train split) and evaluation (val) data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from kseg.errors import KsegError

    os.makedirs(args.out, exist_ok=True)
    try:
        run(args.checkpoints, args.out, args.modes, tuple(args.input_size), args.data, args.threads)
    except KsegError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
