"""The quantization study: every way to shrink a trained model, measured side by side.

    rows = kseg.study.run("runs/x/best.keras", train, val, "study", input_size=(128, 128))

For each mode (float32, float16, dynamic, int8, int16x8, QAT int8, pruned float32 and pruned int8)
it writes the LiteRT file and measures its size (and gzip size), latency at each thread count,
mIoU, the mIoU drop from float32, and the share of pixels whose label agrees with float32. Writes
`study.json`, `study.md` and `study.png` (latency against mIoU). `sensitivity` adds, per layer, the
error full-int8 quantization puts into its output (TFLite's QuantizationDebugger), worst first.
"""

import csv
import dataclasses
import io
import json
import os
import re

import numpy as np

from kseg import bench, evaluation, export
from kseg.errors import KsegError

POST_TRAINING = ("float32", "float16", "dynamic", "int8", "int16x8")
MODES = (*POST_TRAINING, "qat_int8", "pruned_float32", "pruned_int8")


@dataclasses.dataclass
class StudyConfig:
    modes: tuple = MODES
    threads: tuple = (1, 2)
    runs: int = 20
    num_calibration: int = 100
    qat_steps: int | None = None  # None: one pass over the training split
    qat_learning_rate: float = 1e-5
    sparsity: float = 0.5
    prune_epochs: int = 2
    batch_size: int = 8
    sensitivity: bool = False
    progress: bool = True


def run(model, train, val, out_dir, input_size, config=None):
    """Runs the study for a Keras model (or `.keras` path); returns the rows written to `study.json`."""
    config = config or StudyConfig()
    unknown = set(config.modes) - set(MODES)
    if unknown:
        raise KsegError(f"unknown study modes {sorted(unknown)}; available: {', '.join(MODES)}")
    source = model if isinstance(model, str) else None
    model = evaluation.KerasPredictor(model).model
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, model.name)
    modes = ["float32"] + [m for m in config.modes if m != "float32"]  # float32 is the reference
    rows = []
    for mode in modes:
        path = f"{stem}_{mode}.tflite"
        _say(config, f"{mode}: exporting {path}")
        info = export_mode(model, path, mode, input_size, train, source=source, config=config)
        scores = evaluation.evaluate(path, val, progress=False).scores
        row = {"mode": mode, "artifact": os.path.basename(path), "size_bytes": info["size_bytes"],
               "gzip_bytes": export.gzip_size(path), "miou": scores["miou"], "sparsity": info.get("sparsity"),
               "latency_ms": {}}
        for threads in config.threads:
            row["latency_ms"][str(threads)] = bench.benchmark(path, threads=threads, runs=config.runs)["mean_ms"]
        reference = rows[0] if rows else row
        row["miou_drop"] = reference["miou"] - row["miou"]
        row["agreement"] = 1.0 if not rows else evaluation.agreement(
            os.path.join(out_dir, reference["artifact"]), path, val)
        rows.append(row)
        _say(config, f"{mode}: mIoU {100 * row['miou']:.2f} (drop {100 * row['miou_drop']:+.2f}), agreement "
                     f"{100 * row['agreement']:.2f}%, {row['size_bytes'] / 1e6:.2f} MB, "
                     + ", ".join(f"{ms:.1f} ms @{t}" for t, ms in row["latency_ms"].items()))
    result = {"model": model.name, "source": source, "input_size": list(input_size), "rows": rows}
    if config.sensitivity:
        _say(config, "per-layer int8 sensitivity (QuantizationDebugger)")
        result["sensitivity"] = layer_sensitivity(model, train, input_size, config.num_calibration)
    _write(out_dir, result, config)
    return result


def export_mode(model, path, mode, input_size, train, source=None, config=None, output="logits", io_dtype="uint8"):
    """Writes `model` as LiteRT in any study mode (post-training, "qat_int8", "pruned_<mode>"); returns the sidecar.

    QAT and pruning fine-tune on `train` as `config` (a StudyConfig) says.
    """
    from kseg import quantization

    config = config or StudyConfig()
    common = dict(class_names=train.class_names if train is not None else None, source=source,
                  num_calibration=config.num_calibration, output=output)
    if mode in POST_TRAINING:
        return export.to_litert(model, path, mode, input_size, calibration=train, io_dtype=io_dtype, **common)
    if train is None:
        raise KsegError(f"{mode} fine-tunes the model: it needs training data")
    if mode == "qat_int8":
        return quantization.qat_to_litert(model, path, train, input_size, steps=config.qat_steps,
                                          batch_size=config.batch_size, learning_rate=config.qat_learning_rate,
                                          **common)
    if mode.startswith("pruned_") and mode.removeprefix("pruned_") in POST_TRAINING:
        return quantization.prune_to_litert(model, path, train, input_size, sparsity=config.sparsity,
                                            mode=mode.removeprefix("pruned_"), epochs=config.prune_epochs,
                                            batch_size=config.batch_size, **common)
    raise KsegError(f"unknown export mode {mode!r}; available: {', '.join(MODES)}")


def layer_sensitivity(model, train, input_size, num_calibration=32, top=15):
    """Layers whose full-int8 quantization errs most, as [{"tensor", "rmse_over_scale", ...}], worst first.

    `rmse/scale` is the root-mean-square error of a layer's int8 output against its float output,
    in units of its quantization step: about 0.29 is pure rounding (1/sqrt(12)); more means the
    layer's range or weights quantize badly.
    """
    import tensorflow as tf

    images = export.calibration_images(train, tuple(input_size), num_calibration)
    converter = export.litert_converter(model, "int8", input_size, images)
    converter.inference_input_type = converter.inference_output_type = tf.float32  # the debugger feeds floats
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image] for image in images))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    weighted = {layer.name for layer in model.layers if hasattr(layer, "kernel")}
    named = {layer.name for layer in model.layers}
    rows = []
    for row in csv.DictReader(dump):
        scale = float(row["scale"])
        rows.append({"layer": _layer_name(row["tensor_name"], weighted, named), "op": row["op_name"],
                     "tensor": row["tensor_name"], "scale": scale,
                     "rmse_over_scale": float(np.sqrt(float(row["mean_squared_error"])) / scale) if scale else 0.0,
                     "max_abs_error": float(row["max_abs_error"])})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows[:top]


def _layer_name(tensor, weighted, named):
    """The Keras layer behind a (fused) LiteRT tensor name like "model_1/block_1_expand_1/convolution;..."."""
    candidates = [re.sub(r"_\d+$", "", part.split("/")[1]) for part in tensor.split(";") if part.count("/") >= 1]
    return next((c for c in candidates if c in weighted), next((c for c in candidates if c in named), tensor))


def _say(config, text):
    if config.progress:
        print(f"  {text}", flush=True)


def _write(out_dir, result, config):
    from kseg.demo import latency_plot

    rows = result["rows"]
    threads = [str(t) for t in config.threads]
    lines = ["| mode | size (MB) | gzip (MB) | " + " | ".join(f"ms @{t} thr" for t in threads)
             + " | mIoU | drop | agrees with float32 |",
             "|---|---:|---:|" + "---:|" * len(threads) + "---:|---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r['latency_ms'][t]:.1f}" for t in threads)
        lines.append(f"| {r['mode']} | {r['size_bytes'] / 1e6:.2f} | {r['gzip_bytes'] / 1e6:.2f} | {cells} "
                     f"| {100 * r['miou']:.2f} | {100 * r['miou_drop']:+.2f} | {100 * r['agreement']:.2f}% |")
    text = f"# Quantization study: {result['model']} at {result['input_size'][0]}x{result['input_size'][1]}\n\n"
    text += "\n".join(lines) + "\n\n![latency versus mIoU](study.png)\n"
    if result.get("sensitivity"):
        text += "\n## Layers that int8 hurts most (RMSE of the int8 output over its quantization step)\n\n"
        text += "| layer | op | RMSE / scale | max abs error |\n|---|---|---:|---:|\n"
        text += "\n".join(f"| {r['layer']} | {r['op']} | {r['rmse_over_scale']:.2f} | {r['max_abs_error']:.3g} |"
                          for r in result["sensitivity"]) + "\n"
    export.write_atomic(os.path.join(out_dir, "study.md"), text.encode())
    export.write_atomic(os.path.join(out_dir, "study.json"), json.dumps(result, indent=2).encode())
    artifacts = {r["mode"]: r for r in rows}
    latency_plot(artifacts, max(config.threads), os.path.join(out_dir, "study.png"))
