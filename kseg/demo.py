"""`kseg demo`: the whole path on the embedded dataset, from training to a benchmarked int8 LiteRT model.

Trains DeepLabV3+ (MobileNetV2) on the synthetic shapes, evaluates it, exports float32 and full-int8
LiteRT files, evaluates and benchmarks every artifact, and writes `report.md` with a table, overlay
pictures, a confusion matrix and a latency-versus-mIoU plot.
"""

import dataclasses
import json
import os
import time

import numpy as np
from PIL import Image

import kseg
from kseg import viz


@dataclasses.dataclass
class DemoConfig:
    out_dir: str = "kseg-demo"
    steps: int = 1600
    learning_rate: float = 5e-3  # from scratch, DeepLabV3+ learns these shapes far faster than at 1e-3
    image_size: int = 128
    num_images: int = 480  # training images; validation gets a quarter
    batch_size: int = 16
    augment: str = "topdown"  # the shapes have no up and a narrow range of sizes
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    threads: tuple = (1, 2)
    bench_runs: int = 30
    seed: int = 0
    overwrite: bool = False

    @classmethod
    def quick(cls, out_dir):
        """A minute-long run with a narrow model: what the tests and a first look use."""
        return cls(out_dir=out_dir, steps=30, num_images=32, image_size=64, batch_size=8, bench_runs=3, threads=(2,),
                   model_kwargs=dict(kseg.models.architecture("deeplabv3plus").tiny))


def _stage(number, title):
    print(f"\n[{number}/6] {title}", flush=True)


def run(config):
    """Runs the demo; returns the results dict that `results.json` holds."""
    from kseg import bench, evaluation, export, training

    started = time.time()
    os.makedirs(config.out_dir, exist_ok=True)
    size = (config.image_size, config.image_size)
    data_options = {"num_images": config.num_images, "size": size, "seed": config.seed}

    _stage(1, f"data: synthetic shapes, {config.num_images} training images at {size[0]}x{size[1]}")
    train_split = kseg.data.load("synthetic", "train", **data_options)
    val_split = kseg.data.load("synthetic", "val", **data_options)
    print(f"      {train_split.description}\n      {val_split.description}")

    _stage(2, f"training DeepLabV3+ (MobileNetV2) for {config.steps} steps")
    train_config = training.TrainConfig(
        model="deeplabv3plus", model_kwargs=config.model_kwargs, data="synthetic", data_options=data_options,
        crop_size=size, batch_size=config.batch_size, steps=config.steps, seed=config.seed,
        learning_rate=config.learning_rate, augment=config.augment, loss="ce+dice", verbose=2,
        out_dir=os.path.join(config.out_dir, "run"), overwrite=config.overwrite,
    )
    train_started = time.time()
    result = training.train(train_config)
    train_seconds = time.time() - train_started

    _stage(3, "evaluating the Keras model on the validation split")
    keras_eval = evaluation.evaluate(result.best_path, val_split)
    print(f"      mIoU {100 * keras_eval.scores['miou']:.2f}")

    _stage(4, "exporting LiteRT float32 and full int8 (uint8 in and out, calibrated on training images)")
    artifacts = {"keras": result.best_path}
    model = kseg.evaluation.KerasPredictor(result.best_path).model
    for mode in ("float32", "int8"):
        path = os.path.join(config.out_dir, f"deeplabv3plus_{mode}.tflite")
        info = export.to_litert(model, path, mode=mode, input_size=size, calibration=train_split,
                                class_names=train_split.class_names, source=result.best_path)
        artifacts[mode] = path
        print(f"      {path}: {info['size_bytes'] / 1e6:.2f} MB, ops {', '.join(info['ops'])}")

    _stage(5, "evaluating the LiteRT artifacts")
    evaluations = {"keras": keras_eval}
    for mode in ("float32", "int8"):
        evaluations[mode] = evaluation.evaluate(artifacts[mode], val_split)
        print(f"      {mode}: mIoU {100 * evaluations[mode].scores['miou']:.2f}")
    agreement = evaluation.agreement(artifacts["float32"], artifacts["int8"], val_split)
    print(f"      int8 labels agree with float32 on {100 * agreement:.2f}% of pixels")

    _stage(6, f"benchmarking at {size[0]}x{size[1]}, threads {', '.join(map(str, config.threads))}")
    latency = {}
    for name, path in artifacts.items():
        for threads in config.threads:
            stats = bench.benchmark(path, threads=threads, runs=config.bench_runs, input_size=size)
            latency[f"{name}@{threads}"] = stats
            print(f"      {name:8s} {threads} thread(s): {stats['mean_ms']:.1f} ms mean, p90 {stats['p90_ms']:.1f} ms")

    results = {
        "config": dataclasses.asdict(config),
        "train_seconds": train_seconds,
        "artifacts": {
            name: {
                "path": path,
                "size_bytes": bench._size(path),
                "miou": evaluations[name].scores["miou"],
                "scores": {k: v for k, v in evaluations[name].scores.items()},
                "latency_ms": {str(t): latency[f"{name}@{t}"]["mean_ms"] for t in config.threads},
            }
            for name, path in artifacts.items()
        },
        "int8_agreement": agreement,
        "class_names": train_split.class_names,
    }
    _write_report(config, results, evaluations)
    results["seconds"] = time.time() - started
    with open(os.path.join(config.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nreport: {os.path.join(config.out_dir, 'report.md')} ({results['seconds'] / 60:.1f} min in all)")
    return results


def _write_report(config, results, evaluations):
    from kseg.evaluation import confusion_figure

    out = config.out_dir
    _overlays(evaluations, os.path.join(out, "overlays.png"))
    confusion_figure(evaluations["int8"], os.path.join(out, "confusion_int8.png"))
    latency_plot(results["artifacts"], max(config.threads), os.path.join(out, "latency_miou.png"))
    threads = max(config.threads)
    rows = ["| artifact | size (MB) | mIoU | Δ vs Keras | " + " | ".join(f"ms @{t} thr" for t in config.threads) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(config.threads)]
    base = results["artifacts"]["keras"]["miou"]
    for name, a in results["artifacts"].items():
        cells = " | ".join(f"{a['latency_ms'][str(t)]:.1f}" for t in config.threads)
        rows.append(f"| {name} | {a['size_bytes'] / 1e6:.2f} | {100 * a['miou']:.2f} "
                    f"| {100 * (a['miou'] - base):+.2f} | {cells} |")
    float_ms = results["artifacts"]["float32"]["latency_ms"][str(threads)]
    int8_ms = results["artifacts"]["int8"]["latency_ms"][str(threads)]
    text = f"""# kseg demo report

DeepLabV3+ (MobileNetV2) trained for {config.steps} steps of {config.batch_size} ({results['train_seconds'] / 60:.1f} min) on
{config.num_images} synthetic {config.image_size}x{config.image_size} images; scores on the validation split.

{chr(10).join(rows)}

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
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)


def _overlays(evaluations, path, count=4):
    rows = []
    for (image, truth, keras_labels), (_, _, int8_labels) in zip(
        evaluations["keras"].predictions[:count], evaluations["int8"].predictions[:count]
    ):
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        parts = [image, gap, viz.overlay(image, truth), gap, viz.overlay(image, keras_labels), gap,
                 viz.overlay(image, int8_labels)]
        rows.append(np.concatenate(parts, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)


def latency_plot(artifacts, threads, path):
    """Latency (ms) against mIoU, one point per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, a in artifacts.items():
        x, y = a["latency_ms"][str(threads)], 100 * a["miou"]
        ax.scatter(x, y, s=30 + a["size_bytes"] / 5e4, alpha=0.7)
        ax.annotate(f"{name} ({a['size_bytes'] / 1e6:.1f} MB)", (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, ms (batch 1, {threads} threads, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("latency versus mIoU (marker area ~ file size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
