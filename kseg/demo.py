"""`kseg demo`: the whole path on the embedded dataset, from training to a benchmarked int8 LiteRT model.

Trains a U-Net on the synthetic shapes with `kseg train`'s recipe, evaluates it, exports float32 and full-int8
LiteRT files, evaluates and benchmarks every artifact, and writes `report.md` with a table, overlay
pictures, a confusion matrix and a latency-versus-mIoU plot.
"""

import dataclasses
import os
import time

import kseg
from kseg.training.config import TrainConfig

# numpy, PIL and the report's plotting are imported where used: `kseg.cli` reads this module's constants for its help,
# and every command's start-up would pay for them.


def _demo_training():
    # What a host about 6x slower than an AVX-512 one fits in TRAINING_BUDGET must reach 75% mIoU: measured on
    # these shapes (75 s of training on an AVX-512 host), a U-Net at 96x96 with 4 crops a step scored 82% where
    # DeepLabV3+ (MobileNetV2, 128x128, batch 16) scored 34% in 90 s, a U-Net at 128x128 75%, and at 96x96 with
    # the recipe's 7 crops 54%. The rest (learning rate, loss, augmentation, width) is the recipe's.
    return TrainConfig(model="unet", steps=STEPS, time_budget=TRAINING_BUDGET, batch_size=4, pretrained="none",
                       verbose=2)


TRAINING_BUDGET = 480.0  # seconds from the demo's start to the end of training: the whole demo in about 10 minutes
STEPS = 3000  # or fewer: where a host is fast, the demo ends sooner
QUICK_STEPS = 30


@dataclasses.dataclass
class DemoConfig:
    """What `kseg demo` runs: its data, its training (a `TrainConfig`: the demo states only what differs from
    `kseg train`'s defaults; steps or the time budget, whichever ends first) and its benchmark."""

    out_dir: str = "kseg-demo"
    image_size: int = 96
    num_images: int = 480  # training images; validation gets a quarter
    threads: tuple = (1, 2)
    bench_runs: int = 30
    train: TrainConfig = dataclasses.field(default_factory=_demo_training)

    @classmethod
    def quick(cls, out_dir):
        """A minute-long run with a narrow model: what the tests and a first look use."""
        config = cls(out_dir=out_dir, num_images=32, image_size=64, bench_runs=3, threads=(2,))
        config.train = dataclasses.replace(config.train, steps=QUICK_STEPS, batch_size=8,
                                           model_kwargs=dict(kseg.models.architecture("unet").tiny))
        return config


def _step(number, title):
    print(f"\n[{number}/6] {title}", flush=True)


def run(config):
    """Runs the demo; returns the results dict that `results.json` holds."""
    from kseg import files, runtime, training
    from kseg.deploy import stage
    from kseg.runtime import bench, evaluation

    started, started_clock = time.time(), time.monotonic()
    size = (config.image_size, config.image_size)
    data_options = {"num_images": config.num_images, "size": size, "seed": config.train.seed}
    train_config = dataclasses.replace(config.train, data="synthetic", data_options=data_options, crop_size=size,
                                       out_dir=os.path.join(config.out_dir, "run")).check()
    os.makedirs(config.out_dir, exist_ok=True)

    _step(1, f"data: synthetic shapes, {config.num_images} training images at {size[0]}x{size[1]}")
    train_split = kseg.data.load("synthetic", "train", **data_options)
    val_split = kseg.data.load("synthetic", "val", **data_options)
    print(f"      {train_split.description}\n      {val_split.description}")

    limits = [f"{train_config.steps} steps"] + [f"{train_config.time_budget:g} s"] * bool(train_config.time_budget)
    _step(2, f"training {train_config.model} (kseg train's recipe) for {' or '.join(limits)}, whichever ends first")
    train_started = time.time()
    result = training.train(train_config, started=started_clock)  # the budget counts from the demo's start
    train_seconds = time.time() - train_started

    _step(3, "evaluating the Keras model on the validation split")
    keras_eval = evaluation.evaluate(result.best_path, val_split)
    print(f"      mIoU {100 * keras_eval.scores['miou']:.2f}")

    _step(4, "exporting LiteRT float32 and full int8 (uint8 in and out, calibrated on training images), "
             f"each evaluated and timed at threads {', '.join(map(str, config.threads))}")
    exported = stage.export_checkpoint(
        runtime.load_keras(result.best_path), config.out_dir, ("float32", "int8"), input_size=size, train=train_split,
        val=val_split, threads=config.threads, runs=config.bench_runs, stem=train_config.model, agreement=True,
        progress=False, source=result.best_path)
    for artifact in exported:
        print(f"      {artifact.summary()}")
    agreement = exported[1].agreement
    print(f"      int8 labels agree with float32 on {100 * agreement:.2f}% of pixels")

    _step(5, f"timing the Keras model at {size[0]}x{size[1]}, threads {', '.join(map(str, config.threads))}")
    keras_latency = {}
    for threads in config.threads:
        stats = bench.benchmark(result.best_path, threads=threads, runs=config.bench_runs, input_size=size)
        keras_latency[str(threads)] = stats["mean_ms"]
        print(f"      keras    {threads} thread(s): {stats['mean_ms']:.1f} ms mean, p90 {stats['p90_ms']:.1f} ms")

    _step(6, "writing the report")
    evaluations = {"keras": keras_eval, **{artifact.mode: artifact.evaluation for artifact in exported}}
    entries = [{"artifact": os.path.basename(result.best_path), "mode": "keras", "path": result.best_path,
                "size_bytes": files.size(result.best_path), "miou": keras_eval.scores["miou"],
                "latency_ms": keras_latency}]
    entries += [{**artifact.entry(), "path": artifact.path, "agreement": None} for artifact in exported]
    results = {
        "config": dataclasses.asdict(config),
        "train_seconds": train_seconds,
        "train_steps": result.summary["steps"],
        "model": f"{result.model.name}, {result.model.count_params() / 1e6:.2f} M parameters",
        "artifacts": {
            entry["mode"]: {"path": entry["path"], "size_bytes": entry["size_bytes"], "miou": entry["miou"],
                            "scores": dict(evaluations[entry["mode"]].scores), "latency_ms": entry["latency_ms"]}
            for entry in entries
        },
        "int8_agreement": agreement,
        "class_names": train_split.class_names,
    }
    _write_report(config, results, evaluations, entries)
    results["seconds"] = time.time() - started
    files.write_json(os.path.join(config.out_dir, "results.json"), results)
    print(f"\nreport: {os.path.join(config.out_dir, 'report.md')} ({results['seconds'] / 60:.1f} min in all)")
    return results


def _write_report(config, results, evaluations, entries):
    from kseg import files, report

    out = config.out_dir
    threads = max(config.threads)
    _overlays(evaluations, os.path.join(out, "overlays.png"))
    report.confusion_figure(evaluations["int8"], os.path.join(out, "confusion_int8.png"))
    report.latency_plot(entries, threads, os.path.join(out, "latency_miou.png"))
    table = report.artifacts_table(entries, config.threads, reference=entries[0])
    float_ms = results["artifacts"]["float32"]["latency_ms"][str(threads)]
    int8_ms = results["artifacts"]["int8"]["latency_ms"][str(threads)]
    text = f"""# kseg demo report

{results['model']} trained for {results['train_steps']} steps of {config.train.batch_size} \
({results['train_seconds'] / 60:.1f} min) on
{config.num_images} synthetic {config.image_size}x{config.image_size} images; scores on the validation split.

{table}

- int8 latency is {int8_ms / float_ms:.2f}x float32 at {threads} threads; int8 labels agree with float32 on
  {100 * results['int8_agreement']:.2f}% of validation pixels.
- LiteRT latency: XNNPACK on this machine, batch 1; Keras: a TensorFlow graph, batch 1.

## Per class (int8 LiteRT)

{evaluations['int8'].table()}

## Pictures

Image, ground truth, Keras prediction, int8 LiteRT prediction:

![overlays](overlays.png)

![latency versus mIoU](latency_miou.png)

![confusion matrix](confusion_int8.png)
"""
    files.write_atomic(os.path.join(out, "report.md"), text.encode())


def _overlays(evaluations, path, count=4):
    import numpy as np
    from PIL import Image

    from kseg import viz

    rows = []
    for (image, truth, keras_labels), (_, _, int8_labels) in zip(
        evaluations["keras"].predictions[:count], evaluations["int8"].predictions[:count]
    ):
        rows.append(viz.panel(image, truth, keras_labels, int8_labels))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)
