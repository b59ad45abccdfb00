"""The export stage: trained checkpoints in, LiteRT artifacts out, each evaluated and timed, with a manifest.

    python export/run.py runs/a/best.keras runs/b/best.keras --out artifacts --modes float32 int8 qat_int8 \\
        --input-size 128 128 --data synthetic
    python export/run.py --zoo --out artifacts     # every registered architecture, trained briefly first

Modes: float32, float16, dynamic, int8, int16x8 (post-training), qat_int8 (quantization-aware
training) and pruned_<mode> (magnitude pruning, then <mode>). Writes `OUT/<checkpoint>_<mode>.tflite`
(+ JSON sidecars), `OUT/manifest.json` and `OUT/report.md`. Every file is written to a temporary name
and renamed, so an interrupted export never leaves a half file under the final name.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(checkpoints, out, modes, input_size, data, threads=2, runs=20, config=None):
    import kseg
    from kseg import bench, evaluation, export, study

    train = kseg.data.load(data, "train")
    val = kseg.data.load(data, "val")
    entries = []
    for checkpoint in checkpoints:
        model = evaluation.KerasPredictor(checkpoint).model
        stem = os.path.basename(os.path.dirname(os.path.abspath(checkpoint))) + "_" + os.path.splitext(
            os.path.basename(checkpoint))[0]
        for mode in modes:
            path = os.path.join(out, f"{stem}_{mode}.tflite")
            info = study.export_mode(model, path, mode, input_size, train, source=checkpoint, config=config)
            scores = evaluation.evaluate(path, val, progress=False).scores
            latency = bench.benchmark(path, threads=threads, runs=runs)
            entries.append({"checkpoint": checkpoint, "mode": mode, "artifact": os.path.basename(path),
                            "size_bytes": info["size_bytes"], "miou": scores["miou"],
                            "latency_ms": latency["mean_ms"], "threads": threads, "ops": info["ops"],
                            **{key: info[key] for key in ("training", "sparsity", "gzip_bytes") if key in info}})
            print(f"{path}: mIoU {100 * scores['miou']:.2f}, {latency['mean_ms']:.2f} ms, "
                  f"{info['size_bytes'] / 1e6:.2f} MB", flush=True)
    manifest = {"input_size": list(input_size), "data": data, "artifacts": entries}
    export.write_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode())
    lines = ["| artifact | mode | size (MB) | mIoU | latency (ms) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {e['artifact']} | {e['mode']} | {e['size_bytes'] / 1e6:.2f} | {100 * e['miou']:.2f} "
              f"| {e['latency_ms']:.2f} |" for e in entries]
    report = f"# Export report\n\n{threads} threads, input {input_size[0]}x{input_size[1]}\n\n" + "\n".join(lines)
    export.write_atomic(os.path.join(out, "report.md"), (report + "\n").encode())
    return entries


def train_zoo(out, input_size, epochs, data):
    """Trains every registered architecture (its narrow test configuration) briefly; returns the checkpoints."""
    import kseg
    from kseg import training

    checkpoints = []
    for name in kseg.models.names():
        run_dir = os.path.join(out, "runs", name)
        best = os.path.join(run_dir, "best.keras")
        if not os.path.exists(best):
            print(f"training {name} for {epochs} epoch(s)", flush=True)
            training.train(training.TrainConfig(
                model=name, model_kwargs=dict(kseg.models.architecture(name).tiny), data=data,
                data_options={"num_images": 64, "size": input_size} if data == "synthetic" else {},
                crop_size=input_size, epochs=epochs, out_dir=run_dir, verbose=0))
        checkpoints.append(best)
    return checkpoints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help=".keras files")
    parser.add_argument("--zoo", action="store_true", help="train every registered architecture briefly, then export")
    parser.add_argument("--zoo-epochs", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--data", default="synthetic", help="calibration and fine-tuning (train), scores (val)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat-steps", type=int, help="quantization-aware training steps (default: one epoch)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="pruned_* modes")
    args = parser.parse_args(argv)
    from kseg import study
    from kseg.errors import KsegError

    if not args.checkpoints and not args.zoo:
        parser.error("give checkpoints or --zoo")
    os.makedirs(args.out, exist_ok=True)
    config = study.StudyConfig(qat_steps=args.qat_steps, sparsity=args.sparsity)
    try:
        checkpoints = list(args.checkpoints)
        if args.zoo:
            checkpoints += train_zoo(args.out, tuple(args.input_size), args.zoo_epochs, args.data)
        run(checkpoints, args.out, args.modes, tuple(args.input_size), args.data, args.threads, config=config)
    except KsegError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
