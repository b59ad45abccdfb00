"""Where post-training quantization loses points, does kseg's quantization-aware training win them back?
(issue 10, part 4)

    python benchmarks/peers/make_venvs.py data                # once: the real datasets' venv
    python benchmarks/qat_recovery.py                         # 4 datasets: ~35 min on 2 cores (train included)
    python benchmarks/qat_recovery.py --datasets mni152_tissue --budget 120
    python benchmarks/qat_recovery.py --datasets synthetic --models deeplabv3plus hrnet

For each dataset (the embedded synthetic shapes and the real folders of benchmarks/learning.py, prepared
the same way, with `--data-python` / $KSEG_DATA_PYTHON), `kseg train --data DIR --time-budget B` trains kseg's
default model (a run folder under --work that exists already is reused), then
`kseg.deploy.stage.export_artifact` writes and scores, on the val split, each with kseg's defaults
(`kseg.deploy.modes.ExportSettings()`):

- float32; post-training int8 and int4 (ai-edge-quantizer: int4 weights, int8 activations);
- qat_int8 (the Keras 3 fake-quant fine-tune, kept only where it beats post-training int8) and qat_int4 (a
  Keras 3 fine-tune with the int4 kernels rounded in the forward pass, at least `kseg.deploy.modes.QAT_INT4_MIN_STEPS`
  steps, then int4), at the
  learning rates of `kseg.deploy.modes.QAT_LEARNING_RATE`;
- a control: the same fine-tune as qat_int4 with nothing rounded, then float32 and post-training int4.
  A short budget leaves a model that more training improves, so "QAT beats post-training" could be only
  "more training"; the control separates the two.

"Recovered" is (qat - ptq) / (float32 - ptq), the share of the post-training loss QAT wins back, against the
trained model and, stricter, against the control (its float32 and its int4). Writes
benchmarks/results/qat_recovery.{json,md}.
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

DATASETS = ["synthetic", "mni152_tissue", "dsb2018_nuclei", "cells3d_nuclei"]
MODES = ["float32", "int8", "qat_int8", "int4", "qat_int4"]
PAIRS = [("int8", "qat_int8"), ("int4", "qat_int4")]
MEANINGFUL = 1.0  # points: a smaller post-training loss is within run-to-run noise, nothing to recover


def train(folder, run, budget, seed, model):
    if os.path.exists(os.path.join(run, "best.keras")):
        with open(os.path.join(run, "config.json")) as f:
            config = json.load(f)
        how = f"time budget {config['time_budget']:g} s" if config.get("time_budget") else f"{config['steps']} steps"
        return f"reused a run of {how}, seed {config['seed']}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--data", folder, "--time-budget", str(budget),
                    "--out", run, "--seed", str(seed), "--verbose", "0", *(["--model", model] if model else [])],
                   check=True, env=env, capture_output=True)
    return f"trained {budget:g} s"


def recovered(reference, ptq, qat):
    loss = reference - ptq
    return None if loss < MEANINGFUL else (qat - ptq) / loss


def measure(name, folder, run, tmp):
    import kseg
    from kseg import provenance, runtime
    from kseg.deploy import modes, stage
    from kseg.deploy.compression import int4_aware_training

    checkpoint = os.path.join(run, "best.keras")
    model = runtime.load_keras(checkpoint)
    size = stage.input_size_of(model, None, provenance.of_checkpoint(checkpoint, model))
    train_split, val = kseg.data.load(folder, "train"), kseg.data.load(folder, "val")
    row = {"dataset": name, "model": model.name, "input_size": list(size), "params": model.count_params(),
           "scores": {}, "seconds": {}}
    for mode in MODES:
        started = time.time()
        result = stage.export_artifact(model, os.path.join(tmp, f"{name}_{mode}.tflite"), mode=mode,
                                       artifact=modes.Artifact(size), train=train_split, val=val)
        row["scores"][mode] = 100 * result.miou
        row["seconds"][mode] = round(time.time() - started, 1)
        if mode == "qat_int4":
            row["fine_tune"] = result.info["fine_tune"]
        print(f"  {name} {mode}: {row['scores'][mode]:.2f} mIoU ({row['seconds'][mode]:.0f} s)", flush=True)
    # the same fine-tune, nothing rounded
    control, _ = int4_aware_training(model, train_split, input_size=size, layers=())
    for mode in ("float32", "int4"):
        result = stage.export_artifact(control, os.path.join(tmp, f"{name}_control_{mode}.tflite"), mode=mode,
                                       artifact=modes.Artifact(size), train=train_split, val=val)
        row["scores"][f"control_{mode}"] = 100 * result.miou
        print(f"  {name} control {mode}: {row['scores'][f'control_{mode}']:.2f}", flush=True)
    s = row["scores"]
    row["recovered"] = {qat: recovered(s["float32"], s[ptq], s[qat]) for ptq, qat in PAIRS}
    row["recovered_vs_control"] = recovered(s["control_float32"], s["control_int4"], s["qat_int4"])
    return row


def fmt_share(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def report(rows, args, wall):
    lines = ["# QAT recovery: post-training quantization against quantization-aware training", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores. Each model: "
             f"`kseg train --data DIR --time-budget {args.budget:g}` (kseg's defaults: a U-Net; or --model), then "
             "every mode with kseg's default export settings; val mIoU of the LiteRT files (kseg.runtime.evaluation). "
             "int4: "
             "ai-edge-quantizer, int4 convolution weights except the first and last, int8 activations.", "",
             "| dataset, model | float32 | int8 | qat_int8 | int8 loss recovered | int4 | qat_int4 "
             "| int4 loss recovered | control fine-tune: float32 / int4 | recovered vs control |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s = row["scores"]
        lines.append(
            f"| {row['dataset']}, {row['model']} | {s['float32']:.2f} | {s['int8']:.2f} | {s['qat_int8']:.2f} | "
            f"{fmt_share(row['recovered']['qat_int8'])} | {s['int4']:.2f} | {s['qat_int4']:.2f} | "
            f"{fmt_share(row['recovered']['qat_int4'])} | {s['control_float32']:.2f} / {s['control_int4']:.2f} | "
            f"{fmt_share(row['recovered_vs_control'])} |")
    lines += ["", f"Recovered: (qat - post-training) / (float32 - post-training), shown where post-training lost at "
              f"least {MEANINGFUL:g} point (\"-\": less, within run-to-run noise). Against the control: the "
              "control's float32 and int4 in place of the trained model's (the same fine-tune as qat_int4, nothing "
              "rounded).", ""]
    for row in rows:
        tune = row.get("fine_tune", {})
        lines.append(f"- {row['dataset']}, {row['model']}: {row['params'] / 1e6:.2f} M parameters at "
                     f"{row['input_size'][0]}x{row['input_size'][1]}, {row['trained']}; qat_int4 fine-tune "
                     f"{tune.get('steps')} steps, batch {tune.get('batch_size')}, lr {tune.get('learning_rate')}, "
                     f"loss {tune.get('loss')}, augmentation {tune.get('augment')}, "
                     f"{len(tune.get('simulated_layers', []))} convolutions rounded; export seconds "
                     + ", ".join(f"{mode} {sec:g}" for mode, sec in row["seconds"].items()))
    lines += ["", f"`python benchmarks/qat_recovery.py` ({wall / 60:.0f} min in all)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--budget", type=float, default=120, help="training seconds per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["auto"],
                        help="architectures to train (kseg train --model); auto: kseg's choice")
    parser.add_argument("--work", default=venvs.work_dir("qat"),
                        help="data and run folders, reused when present (under $KSEG_BENCH_CACHE when set)")
    venvs.add_argument(parser, "data", "reads the real datasets")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of --out's qat_recovery.json for other datasets and models")
    args = parser.parse_args()

    from learning import prepare

    started = time.time()
    rows = []
    for name in args.datasets:
        folder, why = prepare(name, args.work, args.data_python)
        if folder is None:
            print(f"{name}: skipped ({why})", flush=True)
            continue
        for model in args.models:
            run = os.path.join(args.work, "runs", name if model == "auto" else f"{name}-{model}")
            trained = train(folder, run, args.budget, args.seed, None if model == "auto" else model)
            print(f"{name} ({model}): {trained}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(name, folder, run, tmp)
            row["trained"] = trained
            rows.append(row)
    wall = time.time() - started
    os.makedirs(args.out, exist_ok=True)
    previous = os.path.join(args.out, "qat_recovery.json")
    if args.append and os.path.exists(previous):
        with open(previous) as f:
            kept = json.load(f)
        done = {(row["dataset"], row["model"]) for row in rows}
        rows = [row for row in kept["rows"] if (row["dataset"], row["model"]) not in done] + rows
        wall += kept["wall_s"]
    with open(os.path.join(args.out, "qat_recovery.json"), "w") as f:
        json.dump({"budget": args.budget, "seed": args.seed, "rows": rows, "wall_s": round(wall, 1)}, f, indent=2)
    text = report(rows, args, wall)
    with open(os.path.join(args.out, "qat_recovery.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
