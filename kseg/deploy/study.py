"""The quantization study: every way to shrink a trained model, measured side by side.

    result = kseg.deploy.study.run("runs/x/best.keras", train, val, "study", input_size=(128, 128))

For each LiteRT mode of `kseg.deploy.modes.MODES` (by default every one: the post-training modes, int4, mixed,
the QAT modes, which fine-tune first, and the pruned ones) `kseg.deploy.stage` writes the LiteRT file and measures
its size (and gzip size), latency at each thread count, mIoU and the share of pixels whose label agrees with
float32; the study adds the mIoU drop from float32 and the Pareto fronts (the modes nothing beats on both
latency and mIoU, or on both size and mIoU), and writes `study.json`, `study.md` and `study.png` (latency and
size against mIoU, with the fronts drawn).
`sensitivity` adds, per layer, the error full-int8 quantization puts into its output (TFLite's
QuantizationDebugger), worst first.
"""

import csv
import dataclasses
import io
import os
import re
import warnings

import numpy as np

from kseg import files, report, runtime
from kseg.deploy import litert, modes, stage
from kseg.deploy.modes import LITERT, ExportSettings


@dataclasses.dataclass
class StudyConfig(ExportSettings):
    """The export settings (calibration, QAT, pruning) plus what the study measures."""

    modes: tuple = LITERT  # every LiteRT mode (ONNX on request: --modes ... onnx)
    threads: tuple = (1, 2)
    runs: int = 20
    sensitivity: bool = False
    progress: bool = True


def run(model, train, val, out_dir, input_size=None, config=None):
    """Runs the study for a Keras model (or `.keras` path); returns the result written to `study.json`."""
    config = config or StudyConfig()
    source = model if isinstance(model, str) else None
    model = runtime.load_keras(model) if source else model
    results = stage.export_checkpoint(model, out_dir, config.modes, input_size=input_size, train=train, val=val,
                                      settings=config, threads=config.threads, runs=config.runs, agreement=True,
                                      progress=config.progress, source=source)
    rows = [result.entry() for result in results]
    for row in rows:
        row["miou_drop"] = rows[0]["miou"] - row["miou"]
    threads = str(max(config.threads)) if config.threads else None
    fronts = {"latency": report.pareto_front(rows, lambda r: r["latency_ms"].get(threads)),
              "size": report.pareto_front(rows, lambda r: r["size_bytes"])}
    for row in rows:
        row["pareto"] = [name for name, front in fronts.items() if any(row is r for r in front)]
    first = results[0].info
    result = {"model": first["model"], "source": results[0].source, "input_size": first["input"]["shape"][1:3],
              "rows": rows}
    if config.sensitivity:
        if config.progress:
            print("  per-layer int8 sensitivity (QuantizationDebugger)", flush=True)
        result["sensitivity"] = layer_sensitivity(model, train, result["input_size"], config.num_calibration)
    _write(out_dir, result, config)
    return result


def layer_sensitivity(model, train, input_size, num_calibration=32, top=15):
    """Layers whose full-int8 quantization errs most, as [{"tensor", "rmse_over_scale", ...}], worst first.

    `rmse/scale` is the root-mean-square error of a layer's int8 output against its float output,
    in units of its quantization step: about 0.29 is pure rounding (1/sqrt(12)); more means the
    layer's range or weights quantize badly.
    """
    import tensorflow as tf

    images = litert.calibration_images(train, tuple(input_size), num_calibration)
    converter = litert.litert_converter(model, mode="int8", artifact=modes.Artifact(tuple(input_size)),
                                        calibration=images)
    converter.inference_input_type = converter.inference_output_type = tf.float32  # the debugger feeds floats
    with warnings.catch_warnings():  # the debugger runs tf.lite.Interpreter inside; LiteRT has no debugger
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
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


def _write(out_dir, result, config):
    threads = [str(t) for t in config.threads]
    height, width = result["input_size"]
    text = f"# Quantization study: {result['model']} at {height}x{width}\n\n"
    text += report.artifacts_table(result["rows"], threads, reference=result["rows"][0])
    for cost, what in (("latency", f"latency at {max(config.threads)} threads" if config.threads else None),
                       ("size", "size")):
        front = [row["mode"] for row in result["rows"] if cost in row["pareto"]]
        if what and front:
            text += f"\n\nPareto front, {what} against mIoU (nothing is both cheaper and better): {', '.join(front)}"
    text += "\n\n![latency and size versus mIoU, with their Pareto fronts](study.png)\n"
    mixed = [row for row in result["rows"] if row.get("quantizer", {}).get("selection")]
    for row in mixed:
        chosen = row["quantizer"]
        layers = ", ".join(f"{p['layer']} ({p['op']})" for p in chosen["promoted"]) or "none"
        text += (f"\n{row['mode']}: ops kept in {chosen['promote']} to stay within {chosen['max_drop']} mIoU points of "
                 f"float32 on the calibration images: {layers}")
        denied = [*chosen["float_ops"], *chosen["float_layers"]]
        text += f" (and in float as asked: {', '.join(denied)})\n" if denied else "\n"
    if result.get("sensitivity"):
        text += "\n## Layers that int8 hurts most (RMSE of the int8 output over its quantization step)\n\n"
        text += report.markdown_table(
            ["layer", "op", "RMSE / scale", "max abs error"],
            [[r["layer"], r["op"], f"{r['rmse_over_scale']:.2f}", f"{r['max_abs_error']:.3g}"]
             for r in result["sensitivity"]], "llrr") + "\n"
    files.write_atomic(os.path.join(out_dir, "study.md"), text.encode())
    files.write_json(os.path.join(out_dir, "study.json"), result)
    report.pareto_plot(result["rows"], max(config.threads), os.path.join(out_dir, "study.png"))
