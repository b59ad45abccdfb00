"""The export stage (`kseg.deploy.stage`): checkpoints in; each evaluated and timed, artifacts, manifest.json and
report.md out.

    python export/run.py runs/a/best.keras runs/b/best.keras --out artifacts --modes float32 int8 qat_int8
    python export/run.py --zoo --out artifacts     # every registered architecture, trained briefly first
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(checkpoints, out, modes, input_size=None, data="synthetic", threads=2, runs=20, settings=None):
    """Exports, evaluates (on `data`'s val split) and times every checkpoint in every mode; returns the entries."""
    import kseg
    from kseg.deploy import stage

    train, val = kseg.data.load(data, "train"), kseg.data.load(data, "val")
    results = []
    for checkpoint in checkpoints:
        results += stage.export_checkpoint(checkpoint, out, modes, input_size=input_size, train=train, val=val,
                                           settings=settings, threads=(threads,), runs=runs,
                                           stem=stage.artifact_stem(checkpoint, with_folder=True))
    return stage.write_manifest(out, results, input_size=input_size and list(input_size), data=data, threads=threads)


def main(argv=None):
    from kseg.deploy import modes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help=".keras files")
    parser.add_argument("--zoo", action="store_true", help="train every registered architecture briefly, then export")
    parser.add_argument("--zoo-epochs", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", nargs="+", default=["float32", "int8"], choices=list(modes.MODES))
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the training crop")
    parser.add_argument("--data", default="synthetic", help="calibration and fine-tuning (train), scores (val)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat-steps", type=int, help="quantization-aware training steps (default: one epoch)")
    parser.add_argument("--sparsity", type=float, default=modes.ExportSettings.sparsity, help="pruned_* modes")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.zoo:
        parser.error("give checkpoints or --zoo")
    from kseg.deploy import stage
    from kseg.errors import KsegError

    try:
        size = tuple(args.input_size or (128, 128))
        zoo = stage.train_zoo(args.out, size, args.zoo_epochs, args.data) if args.zoo else []
        run([*args.checkpoints, *zoo], args.out, args.modes, args.input_size, args.data, args.threads,
            settings=modes.ExportSettings(qat_steps=args.qat_steps, sparsity=args.sparsity))
    except KsegError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
