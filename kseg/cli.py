"""The `kseg` command line: `kseg --help` lists every command."""

import argparse
import json
import os
import sys
import traceback

from kseg import modes
from kseg.errors import KsegError, first_line


def _pair(text):
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 128 or 256x320, got {text!r}") from None


def _model_args(items):
    """`--model-arg key=value` pairs; values are JSON when they parse (numbers, dicts), else strings."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"kseg: error: --model-arg expects key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_demo(args):
    from kseg import demo

    config = demo.DemoConfig.quick(args.out) if args.quick else demo.DemoConfig(out_dir=args.out)
    if args.steps is not None:
        config.steps = args.steps
    config.overwrite = args.overwrite
    demo.run(config)


TRAIN_FLAGS = {  # TrainConfig field -> argparse destination; None on the command line keeps the config's value
    "model": "model", "data": "data", "val_data": "val_data", "num_classes": "num_classes",
    "crop_size": "crop_size", "batch_size": "batch_size", "steps": "steps", "epochs": "epochs",
    "time_budget": "time_budget", "steps_per_epoch": "steps_per_epoch", "val_every": "val_every",
    "optimizer": "optimizer", "learning_rate": "lr", "loss": "loss", "augment": "augment", "seed": "seed",
    "mixed_precision": "mixed_precision", "distribute": "distribute", "out_dir": "out", "verbose": "verbose",
}


def cmd_train(args):
    from kseg import training

    overrides = {field: getattr(args, dest) for field, dest in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    if args.model_arg:
        overrides["model_kwargs"] = _model_args(args.model_arg)
    overrides["overwrite"] = args.overwrite
    if args.config:
        config = training.TrainConfig.from_json(args.config, **overrides)
    else:
        config = training.TrainConfig(**overrides)
    result = training.train(config)
    print(f"best model: {result.best_path}")


def _split(args):
    import kseg

    return kseg.data.load(args.data, args.split, num_classes=args.num_classes)


def cmd_evaluate(args):
    from kseg import evaluation, report

    split = _split(args)
    result = evaluation.evaluate(args.model, split, num_threads=args.threads)
    print(result.table())
    s = result.scores
    print(f"\nmIoU {100 * s['miou']:.2f}  pixel accuracy {100 * s['pixel_accuracy']:.2f}  "
          f"mean class accuracy {100 * s['mean_class_accuracy']:.2f}  FWIoU {100 * s['fwiou']:.2f}  "
          f"Dice {100 * s['dice']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "data": args.data, "split": args.split, **result.to_json()}, f, indent=2)
    if args.confusion:
        report.confusion_figure(result, args.confusion)


def cmd_predict(args):
    import numpy as np
    from PIL import Image

    from kseg import runtime, viz
    from kseg.errors import DataError

    runner = runtime.predictor(args.model, args.threads)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot decode image ({first_line(error)})") from error
        labels = runner.labels(pixels[None].astype(np.float32))[0]
        stem = os.path.splitext(os.path.basename(path))[0]
        viz.label_image(labels).save(os.path.join(args.out, f"{stem}.png"))
        Image.fromarray(viz.overlay(pixels, labels)).save(os.path.join(args.out, f"{stem}_overlay.jpg"), quality=92)
        print(f"{path} -> {os.path.join(args.out, stem)}.png, {stem}_overlay.jpg")


def _settings(args, cls=modes.ExportSettings, **more):
    """The export settings (or a StudyConfig) from the fine-tuning flags."""
    return cls(num_calibration=args.num_calibration, qat_steps=args.qat_steps, qat_learning_rate=args.qat_lr,
               sparsity=args.sparsity, prune_epochs=args.prune_epochs, batch_size=args.batch_size, **more)


def cmd_export(args):
    import kseg
    from kseg import export, provenance, runtime, stage

    model = runtime.load_keras(args.model)
    origin = provenance.of_checkpoint(args.model, model)
    data = args.calibration_data or origin.get("data") or "synthetic"
    needs_data = any(modes.get(mode).needs_data for mode in args.modes)
    train = kseg.data.load(data, "train", num_classes=args.num_classes) if needs_data else None
    if args.savedmodel:
        print(export.save_savedmodel(model, os.path.join(args.out, stage.artifact_stem(args.model) + "_savedmodel")))
    results = stage.export_checkpoint(model, args.out, args.modes, args.input_size, train, settings=_settings(args),
                                      output=args.output, io_dtype=args.io_dtype, source=args.model)
    stage.write_manifest(args.out, results, calibration_data=data if needs_data else None)
    print(f"manifest: {os.path.join(args.out, 'manifest.json')} (sidecars: <artifact>.json)")


def cmd_quantize_study(args):
    import kseg
    from kseg import study

    train = kseg.data.load(args.data, "train", num_classes=args.num_classes)
    val = kseg.data.load(args.data, args.split, num_classes=args.num_classes)
    config = _settings(args, study.StudyConfig, modes=tuple(args.modes), threads=tuple(args.threads), runs=args.runs,
                       sensitivity=args.sensitivity)
    study.run(args.model, train, val, args.out, args.input_size, config)
    print(f"report: {os.path.join(args.out, 'study.md')}")


def cmd_bench(args):
    from kseg import bench

    results = []
    for path in args.artifacts:
        for threads in args.threads:
            stats = bench.benchmark(path, threads=threads, runs=args.runs, warmup=args.warmup,
                                    input_size=args.input_size)
            results.append(stats)
            print(f"{path}  threads {threads}  {stats['input_size'][0]}x{stats['input_size'][1]}  "
                  f"mean {stats['mean_ms']:.2f} ms  p50 {stats['p50_ms']:.2f}  p90 {stats['p90_ms']:.2f}  "
                  f"size {stats['size_bytes'] / 1e6:.2f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def cmd_data_check(args):
    import kseg
    from kseg.data import check

    colors = _colors(args.colors)
    report = check(args.dir, num_classes=args.num_classes, colors=colors)
    print(f"{args.dir}: {len(report.pairs)} image/mask pairs, {report.num_classes} classes")
    for (height, width), count in report.sizes.most_common(5):
        print(f"  size {width}x{height}: {count} images")
    if len(report.sizes) > 5:
        print(f"  ... {len(report.sizes) - 5} more sizes")
    if report.binary_255:
        print("  masks hold only 0 and 255: 255 is read as the foreground (class 1), not as ignore")
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped (not used for training):")
        for line in report.skipped:
            print(f"  {line}")
    total = max(int(report.histogram.sum()), 1)
    print("  label   pixels      share")
    for label in [i for i in range(256) if report.histogram[i]]:
        name = "ignore" if label == kseg.IGNORE_LABEL else str(label)
        print(f"  {name:>6}  {int(report.histogram[label]):>10}  {100 * report.histogram[label] / total:6.2f}%")
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        for problem in report.problems:
            print(f"  {problem}")
        return 1
    print("no problems found")
    return 0


def _colors(path):
    """A colour table from JSON: {"r,g,b": class} or [[r, g, b], ...] (index = class)."""
    if not path:
        return None
    with open(path) as f:
        table = json.load(f)
    if isinstance(table, list):
        return {tuple(color): label for label, color in enumerate(table)}
    return {tuple(int(c) for c in key.split(",")): int(label) for key, label in table.items()}


def cmd_data_synth(args):
    from kseg.data import write_folder

    for split, count in (("train", args.num_images), ("val", max(args.num_images // 4, 1))):
        write_folder(os.path.join(args.out, split), count, _pair(str(args.size)), args.seed, split)
    print(f"wrote {args.out}/train and {args.out}/val (images/ and palette masks/)")


def cmd_data_pack(args):
    from kseg.data import shards

    index = shards.pack(args.dir, args.out, args.shards, num_classes=args.num_classes, colors=_colors(args.colors))
    counts = ", ".join(f"{name} {entry['count']} pairs in {len(entry['files'])} shards"
                       for name, entry in index["splits"].items())
    print(f"wrote {args.out}: {counts}, {index['num_classes']} classes (train with: kseg train --data {args.out})")


def cmd_models(args):
    import kseg

    for name in kseg.models.names():
        print(f"{name:16s} {kseg.models.architecture(name).paper}")
    print(f"\nbackbones: {', '.join(kseg.models.backbones.names())}")


def _add_fine_tuning_args(c):
    defaults = modes.ExportSettings()
    c.add_argument("--num-calibration", type=int, default=defaults.num_calibration,
                   help="images that calibrate int8 ranges")
    c.add_argument("--qat-steps", type=int, default=defaults.qat_steps,
                   help="quantization-aware training steps (default: one epoch)")
    c.add_argument("--qat-lr", type=float, default=defaults.qat_learning_rate,
                   help="QAT learning rate: small, so the model adapts to quantization without drifting")
    c.add_argument("--sparsity", type=float, default=defaults.sparsity, help="pruned_* modes: share of zero weights")
    c.add_argument("--prune-epochs", type=int, default=defaults.prune_epochs)
    c.add_argument("--batch-size", type=int, default=defaults.batch_size, help="QAT and pruning batch size")


def _modes_help():
    return "; ".join(f"{name}: {mode.summary}" for name, mode in modes.MODES.items())


def parser():
    p = argparse.ArgumentParser(prog="kseg", description="Keras 3 semantic segmentation to LiteRT.")
    p.add_argument("--debug", action="store_true", help="on an error, show the whole trace, not one line")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = commands.add_parser("demo", help="train, evaluate, export, benchmark on the embedded data; write a report")
    c.add_argument("--out", default="kseg-demo", help="report folder (default: kseg-demo)")
    c.add_argument("--steps", type=int, help="training steps (default 1600; --quick: 30)")
    c.add_argument("--quick", action="store_true", help="a one-minute run with a narrow model and tiny data")
    c.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    c.set_defaults(func=cmd_demo)

    c = commands.add_parser("train", help="train a model with Keras fit (resumes in an existing --out)",
                            description="Settings left out are chosen from the data (printed at the start and "
                                        "stored in OUT/config.json; --config repeats a run).")
    c.add_argument("--data", help="folder, 'synthetic' or 'tfds:NAME' (default synthetic)")
    c.add_argument("--model", help="architecture name (see: kseg models); default: chosen from the data")
    c.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="builder argument, e.g. output_stride=8 or backbone_kwargs='{\"alpha\": 0.5}'")
    c.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="train for this long (wall clock, loading included), then stop with the best checkpoint")
    c.add_argument("--steps", type=int, help="total training steps")
    c.add_argument("--epochs", type=float, help="passes over the training data")
    c.add_argument("--steps-per-epoch", type=int, help="with --epochs: an epoch is this many steps")
    c.add_argument("--val-every", type=int, metavar="STEPS",
                   help="validate and save every N steps (default: ~10 times a run, at most 5%% of its time)")
    c.add_argument("--val-data", help="validation data (default: the val split of --data, or a fifth of it)")
    c.add_argument("--num-classes", type=int, help="classes (default: from the data)")
    c.add_argument("--crop-size", type=_pair, help="training crop, e.g. 256 or 256x320 (default: from the images)")
    c.add_argument("--batch-size", type=int, help="default: about 4 x 256 x 256 pixels a step")
    c.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    c.add_argument("--lr", type=float, help="initial learning rate, poly decay to 0 (default 1e-3)")
    c.add_argument("--loss", help="e.g. ce, dice, lovasz, ce+0.5*dice (default: from the class balance)")
    c.add_argument("--augment", choices=["natural", "topdown", "flip", "turns", "none"],
                   help="natural photos (scale, colour), top-down images (microscopy, aerial: flips, turns), flips "
                        "only; default: from the images and the run's length")
    c.add_argument("--seed", type=int)
    c.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"])
    c.add_argument("--distribute", choices=["mirrored"], help="train on every local device via tf.distribute")
    c.add_argument("--verbose", type=int, choices=[0, 1, 2],
                   help="1: a progress bar (default), 2: one line a round, 0: settings and summary only")
    c.add_argument("--config", help="a run's config.json: repeat that run (flags given here override it)")
    c.add_argument("--out", help="run folder: best.keras, last.keras, log.csv, config.json (default runs/kseg)")
    c.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    c.set_defaults(func=cmd_train)

    c = commands.add_parser("evaluate", help="score a .keras or .tflite model: mIoU, per-class table, JSON")
    c.add_argument("model")
    c.add_argument("--data", default="synthetic")
    c.add_argument("--split", default="val")
    c.add_argument("--num-classes", type=int)
    c.add_argument("--threads", type=int, default=2, help="LiteRT threads")
    c.add_argument("--json", help="write scores, per-class lists and the confusion matrix here")
    c.add_argument("--confusion", help="write a confusion-matrix picture (PNG) here")
    c.set_defaults(func=cmd_evaluate)

    c = commands.add_parser("predict", help="label PNGs (palette) and colour overlays for images")
    c.add_argument("model")
    c.add_argument("images", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--threads", type=int, default=2)
    c.set_defaults(func=cmd_predict)

    c = commands.add_parser("export", help="SavedModel and LiteRT: post-training, QAT and pruned modes")
    c.add_argument("model", help="a .keras file")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--modes", nargs="+", default=["float32", "int8"], choices=list(modes.MODES), help=_modes_help())
    c.add_argument("--input-size", type=_pair,
                   help="input size of the exported model, e.g. 257x257 (default: the model's, or its training crop)")
    c.add_argument("--output", default="logits", choices=list(modes.OUTPUTS),
                   help="logits, or a uint8 label map (argmax inside the graph)")
    c.add_argument("--io-dtype", default="uint8", choices=list(modes.IO_DTYPES), help="int8 models' input/output type")
    c.add_argument("--calibration-data",
                   help="its train split calibrates int8 and fine-tunes QAT and pruning (default: the checkpoint's "
                        "training data, else synthetic)")
    c.add_argument("--num-classes", type=int)
    c.add_argument("--savedmodel", action="store_true", help="also write a SavedModel")
    _add_fine_tuning_args(c)
    c.set_defaults(func=cmd_export)

    c = commands.add_parser("quantize-study", help="every quantization mode side by side: size, latency, mIoU")
    c.add_argument("model", help="a trained .keras file")
    c.add_argument("--data", default="synthetic", help="train split: calibration and fine-tuning; --split: scores")
    c.add_argument("--split", default="val")
    c.add_argument("--out", required=True, help="folder for the artifacts, study.md, study.json and study.png")
    c.add_argument("--modes", nargs="+", default=list(modes.MODES), choices=list(modes.MODES), help=_modes_help())
    c.add_argument("--input-size", type=_pair,
                   help="input size of the exported models, e.g. 257x257 (default: the model's, or its training crop)")
    c.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    c.add_argument("--runs", type=int, default=20, help="timed runs per artifact and thread count")
    c.add_argument("--sensitivity", action="store_true", help="also rank layers by their int8 error")
    c.add_argument("--num-classes", type=int)
    _add_fine_tuning_args(c)
    c.set_defaults(func=cmd_quantize_study)

    c = commands.add_parser("bench", help="latency (mean, p50, p90) and size of .tflite / .keras files")
    c.add_argument("artifacts", nargs="+")
    c.add_argument("--threads", type=int, nargs="+", default=[2])
    c.add_argument("--runs", type=int, default=30)
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--input-size", type=_pair, help="for .keras models that take any size (default 257)")
    c.add_argument("--json", help="write the numbers here")
    c.set_defaults(func=cmd_bench)

    c = commands.add_parser("data", help="check a dataset folder, pack it as shards, or write the synthetic one")
    data = c.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data.add_parser("check", help="counts, sizes, class histogram and every problem of a folder")
    d.add_argument("dir")
    d.add_argument("--num-classes", type=int)
    d.add_argument("--colors", help="JSON colour table for RGB masks")
    d.set_defaults(func=cmd_data_check)
    d = data.add_parser("pack", help="write a folder dataset as sharded TFRecord files (large data, many workers)")
    d.add_argument("dir")
    d.add_argument("--out", required=True, help="folder for the shards and their index.json")
    d.add_argument("--shards", type=int, default=8, help="files for the training split (default 8)")
    d.add_argument("--num-classes", type=int)
    d.add_argument("--colors", help="JSON colour table for RGB masks")
    d.set_defaults(func=cmd_data_pack)
    d = data.add_parser("synth", help="write the synthetic dataset as PNG folders")
    d.add_argument("out")
    d.add_argument("--num-images", type=int, default=64)
    d.add_argument("--size", default="128")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_data_synth)

    c = commands.add_parser("models", help="list the registered architectures and backbones")
    c.set_defaults(func=cmd_models)
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs (CUDA probing on CPU machines)
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("kseg: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = None if args.debug else user_error(error)
        if message is None:
            raise
        print(f"kseg: error: {message}", file=sys.stderr)
        return 2


def user_error(error):
    """One line for a mistake the user can fix, or None for a fault to show with its trace.

    User mistakes are KsegErrors, and the ValueErrors and TypeErrors of a model builder's argument checks
    (`--model-arg output_stride=12`), which name the argument.
    """
    if isinstance(error, KsegError):
        return first_line(error, limit=1000)
    frames = traceback.extract_tb(error.__traceback__)
    builder = os.path.join("kseg", "models", "")
    if isinstance(error, (ValueError, TypeError)) and frames and builder in frames[-1].filename:
        return first_line(error, limit=1000)
    return None


if __name__ == "__main__":
    sys.exit(main())
