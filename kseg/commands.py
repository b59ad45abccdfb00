"""What each `kseg` command does, given its parsed arguments (`kseg.cli` parses them and reports errors).

Each command imports what it needs when it runs, so `kseg --help` starts without loading a framework.
"""

import dataclasses
import json
import os

from kseg import settings
from kseg.deploy import modes
from kseg.errors import KsegError


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
    import dataclasses

    from kseg import demo

    config = demo.DemoConfig.quick(args.out) if args.quick else demo.DemoConfig(out_dir=args.out)
    config.train = dataclasses.replace(config.train, overwrite=args.overwrite,
                                       **({"steps": args.steps} if args.steps is not None else {}))
    demo.run(config)


def cmd_train(args):
    from kseg import training

    overrides = settings.given(args, training.TrainConfig)
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = _model_args(overrides["model_kwargs"])
    config = training.TrainConfig.from_json(args.config, **overrides) if args.config else \
        training.TrainConfig(**overrides)
    if args.config and "max_latency" in overrides:  # a new budget for a stored run: choose again
        config = dataclasses.replace(config, model=overrides.get("model", "auto"), latency_table=None,
                                     model_kwargs=overrides.get("model_kwargs"))
    if config.max_latency is not None and config.latency_table is None:  # a repeated run keeps its choice
        from kseg.deploy import stage

        config = stage.choose_by_latency(config)
    result = training.train(config, started=args.started)
    print(f"best model: {result.best_path}")


def _split(args):
    import kseg

    return kseg.data.load(args.data, args.split, num_classes=args.num_classes)


def cmd_evaluate(args):
    from kseg import report
    from kseg.runtime import evaluation

    split = _split(args)
    result = evaluation.evaluate(args.model, split, num_threads=args.threads, tile=args.tile, overlap=args.overlap,
                                 tta=args.tta)
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
    from PIL import Image

    from kseg import viz
    from kseg.runtime import images, video
    from kseg.runtime.segmenter import Segmenter

    segmenter = Segmenter(args.model, tile=args.tile, overlap=args.overlap, tta=args.tta, threads=args.threads)
    if video.is_video(args.out) and not (len(args.images) == 1 and video.is_video(args.images[0])):
        raise KsegError(f"--out {args.out} is a video: give one video to write it from")
    for path in [p for given in args.images for p in (images.in_folder(given) if os.path.isdir(given) else [given])]:
        stem = os.path.splitext(os.path.basename(path))[0]
        if video.is_video(path):
            target = args.out if video.is_video(args.out) else os.path.join(args.out, f"{stem}_seg.mp4")
            done = video.segment(segmenter, path, target)
            print(f"{path} -> {target}: {done.frames} frames of {done.size[1]}x{done.size[0]}, "
                  f"{done.fps:.1f} frames/s")
            continue
        pixels = images.read(path)
        labels = segmenter.predict(pixels)
        os.makedirs(args.out, exist_ok=True)
        viz.label_image(labels).save(os.path.join(args.out, f"{stem}.png"))
        Image.fromarray(viz.overlay(pixels, labels)).save(os.path.join(args.out, f"{stem}_overlay.jpg"), quality=92)
        print(f"{path} -> {os.path.join(args.out, stem)}.png, {stem}_overlay.jpg")


def _settings(args, cls=modes.ExportSettings, **more):
    """The export settings (or a StudyConfig) from the flags `kseg.settings.add_flags` made of its fields."""
    given = settings.given(args, modes.ExportSettings)
    if (given.get("float_ops") or given.get("float_layers")) and not set(args.modes) & set(modes.AEQ):
        raise KsegError(f"--float-ops and --float-layers apply to the ai-edge-quantizer modes ({', '.join(modes.AEQ)})"
                        f"; none of {', '.join(args.modes)} is one")
    return cls(**given, **more)


def cmd_export(args):
    import kseg
    from kseg import provenance, runtime
    from kseg.deploy import savedmodel, stage

    path, stem = _checkpoint(args.model)
    model = runtime.load_keras(path)
    origin = provenance.of_checkpoint(path, model)
    data = args.calibration_data or origin.get("data") or "synthetic"
    needs_data = any(modes.get(mode).needs_data for mode in args.modes)
    train = kseg.data.load(data, "train", num_classes=args.num_classes) if needs_data else None
    if args.savedmodel:
        print(savedmodel.save(model, os.path.join(args.out, stem + "_savedmodel")))
    results = stage.export_checkpoint(model, args.out, args.modes, input_size=args.input_size, train=train,
                                      settings=_settings(args), output=args.output, io_dtype=args.io_dtype,
                                      source=path, stem=stem)
    stage.write_manifest(args.out, results, calibration_data=data if needs_data else None)
    print(f"manifest: {os.path.join(args.out, 'manifest.json')} (sidecars: <artifact>.json)")


def _checkpoint(handle):
    """(the `.keras` file, the artifacts' stem) of a `.keras` path, a model folder or an hf:// handle."""
    if handle.endswith(".keras") and not handle.startswith("hf://"):
        from kseg.deploy import stage

        return handle, stage.artifact_stem(handle)
    from kseg.models import pretrained

    folder, config = pretrained.read_config(handle)
    name = handle.split("@")[0].rstrip("/").split("/")[-1] or "model"
    return os.path.join(folder, config.get("model_file") or pretrained.MODEL_FILE), name


def cmd_convert(args):
    from kseg.models import convert

    folder = convert.convert(args.source, weights=args.weights, out_dir=args.out, class_names=args.class_names,
                             overwrite=args.overwrite, architecture=args.model, num_classes=args.num_classes)
    print(f"wrote {folder} (kseg.models.from_pretrained, kseg export and kseg train --init take it)")


def cmd_push(args):
    from kseg.models import hub

    url = hub.push(args.folder, args.handle, private=args.private)
    print(f"pushed {args.folder} to {args.handle}: {url}")


def cmd_quantize_study(args):
    import kseg
    from kseg.deploy import study

    train = kseg.data.load(args.data, "train", num_classes=args.num_classes)
    val = kseg.data.load(args.data, args.split, num_classes=args.num_classes)
    config = _settings(args, study.StudyConfig, modes=tuple(args.modes), threads=tuple(args.threads), runs=args.runs,
                       sensitivity=args.sensitivity)
    study.run(args.model, train, val, args.out, args.input_size, config)
    print(f"report: {os.path.join(args.out, 'study.md')}")


def cmd_bench(args):
    from kseg.runtime import bench

    results = []
    for path in args.artifacts:
        for threads in args.threads:
            stats = bench.benchmark(path, threads=threads, runs=args.runs, warmup=args.warmup,
                                    input_size=args.input_size, ops=args.ops, fresh_process=args.fresh_process)
            results.append(stats)
            print(bench_lines(stats, top=args.top_ops))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def bench_lines(stats, top=10):
    """`kseg bench`'s report of one `kseg.runtime.bench.benchmark` result: latency, its steps, start-up and memory, and
    with per-op times the `top` op types."""
    height, width = stats["input_size"]
    lines = [f"{stats['path']}  threads {stats['threads']}  {height}x{width}  mean {stats['mean_ms']:.2f} ms  "
             f"p50 {stats['p50_ms']:.2f}  p90 {stats['p90_ms']:.2f}  size {stats['size_bytes'] / 1e6:.2f} MB"]
    if stats.get("invoke"):
        lines.append(f"  invoke {stats['invoke']['mean_ms']:.2f} ms (p50 {stats['invoke']['p50_ms']:.2f}), "
                     f"input copy {stats['input_copy']['mean_ms']:.3f} ms, "
                     f"output copy {stats['output_copy']['mean_ms']:.3f} ms, "
                     f"quantize {stats['quantize']['mean_ms']:.3f} ms, "
                     f"dequantize {stats['dequantize']['mean_ms']:.3f} ms")
    start = f"  init (load + allocate) {stats['init_ms']:.1f} ms, first run {stats['first_run_ms']:.1f} ms"
    if stats.get("peak_rss_growth_mb") is not None:
        start += (f", memory +{stats['peak_rss_growth_mb']:.1f} MB at peak, +{stats['rss_growth_mb']:.1f} MB after "
                  f"(resident set{'' if stats.get('fresh_process') else ', in this process'})")
    lines.append(start)
    if stats.get("ops"):
        lines.append(f"  ops ({stats['ops_source']}, {len(stats['ops'])} types), slowest first:")
        lines.append(f"    {'share':>6}  {'ms/run':>8}  {'nodes':>5}  op")
        for row in stats["ops"][:top]:
            lines.append(f"    {100 * row['share']:5.1f}%  {row['ms']:8.3f}  {row['nodes']:>5}  {row['op']}")
    return "\n".join(lines)


def cmd_data_check(args):
    import kseg
    from kseg.data import check

    colors = _colors(args.colors)
    report = check(args.dir, num_classes=args.num_classes, colors=colors, format=args.format)
    kind = "" if report.format == "folder" else f" ({report.format})"
    print(f"{args.dir}{kind}: {len(report.pairs)} image/mask pairs, {report.num_classes} classes")
    if report.class_names:
        shown = ", ".join(f"{i} {name}" for i, name in enumerate(report.class_names[:30]))
        more = f", ... {len(report.class_names) - 30} more" if len(report.class_names) > 30 else ""
        print(f"  classes: {shown}{more}")
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
        write_folder(os.path.join(args.out, split), count, args.size, args.seed, split)
    print(f"wrote {args.out}/train and {args.out}/val (images/ and palette masks/)")


def cmd_data_pack(args):
    from kseg.data import shards

    index = shards.pack(args.dir, args.out, args.shards, num_classes=args.num_classes, colors=_colors(args.colors),
                        format=args.format)
    counts = ", ".join(f"{name} {entry['count']} pairs in {len(entry['files'])} shards"
                       for name, entry in index["splits"].items())
    print(f"wrote {args.out}: {counts}, {index['num_classes']} classes (train with: kseg train --data {args.out})")


def cmd_models(args):
    import kseg

    for name in kseg.models.names():
        print(f"{name:16s} {kseg.models.architecture(name).paper}")
    print(f"\nbackbones: {', '.join(kseg.models.backbones.names())}")
