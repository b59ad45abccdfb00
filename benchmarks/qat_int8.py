"""Issue 16: does qat_int8 ever lose to post-training int8? DeepLabV3+, LR-ASPP and SegFormer, synthetic and real data.

    python benchmarks/qat_int8.py --modes float32 int8 qat_int8 --label old   # before a change of qat_int8
    python benchmarks/qat_int8.py --modes qat_int8 --append                   # after it: the new path's column

Each model: `kseg train --data DIR --model M --time-budget B` (a run folder under --work that exists already is
reused: every column scores the same checkpoint), then `kseg.deploy.stage.export_artifact` in each mode with kseg's
default export settings, scored on the val split (mIoU of the LiteRT file). `--label old` stores qat_int8's scores
as "old_qat_int8" (the tfmot path measured before it was replaced). For the new qat_int8 the fine-tune record of
the sidecar gives the calibration-image scores of both candidates and which the guard kept; `--unguarded` also
scores the fine-tuned file on val even where the guard kept post-training int8 (the fine-tune's own merit).
Writes benchmarks/results/qat_int8.{json,md}.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from peers import venvs  # noqa: E402

MODELS = ["deeplabv3plus", "lraspp", "segformer"]
DATASETS = ["synthetic", "mni152_tissue"]
COLUMNS = ["float32", "int8", "old_qat_int8", "qat_int8", "qat_unguarded"]


def measure(folder, run, tmp, mode_names, label, unguarded):
    import kseg
    from kseg import provenance, runtime
    from kseg.deploy import compression, modes, stage
    from kseg.errors import KsegError, first_line
    from kseg.runtime import evaluation

    checkpoint = os.path.join(run, "best.keras")
    model = runtime.load_keras(checkpoint)
    size = stage.input_size_of(model, None, provenance.of_checkpoint(checkpoint, model))
    train_split, val = kseg.data.load(folder, "train"), kseg.data.load(folder, "val")
    row = {"model_name": model.name, "input_size": list(size), "params": model.count_params(),
           "scores": {}, "seconds": {}, "errors": {}}
    for mode in mode_names:
        key = f"{label}_{mode}" if label and mode == "qat_int8" else mode
        started = time.time()
        try:
            result = stage.export_artifact(model, os.path.join(tmp, f"{key}.tflite"), mode=mode,
                                           artifact=modes.Artifact(size), train=train_split, val=val)
        except (KsegError, ValueError, RuntimeError, TypeError) as error:
            row["scores"][key], row["errors"][key] = None, first_line(error)
            print(f"  {key}: failed: {first_line(error)}", flush=True)
            continue
        row["scores"][key] = 100 * result.miou
        row["seconds"][key] = round(time.time() - started, 1)
        if result.info.get("fine_tune"):
            row["fine_tune"] = result.info["fine_tune"]
        print(f"  {key}: {row['scores'][key]:.2f} mIoU ({row['seconds'][key]:.0f} s)", flush=True)
    tune = row.get("fine_tune")
    if unguarded and tune and label is None:
        if tune.get("kept") == "qat":
            row["scores"]["qat_unguarded"] = row["scores"]["qat_int8"]
        else:  # the same fine-tune (deterministic), its file written whatever the guard would say
            path = os.path.join(tmp, "qat_unguarded.tflite")
            compression.int8_qat_to_litert(model, path, train_split=train_split, artifact=modes.Artifact(size),
                                           guard=False)
            row["scores"]["qat_unguarded"] = 100 * evaluation.evaluate(path, val, progress=False).scores["miou"]
    return row


def cell(scores, key):
    value = scores.get(key)
    return "-" if value is None else f"{value:.2f}"


def report(rows, budget):
    lines = ["# qat_int8 against post-training int8 (issue 16)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores (shared with other "
             f"jobs). Each model: `kseg train --data DIR --model M --time-budget {budget:g}`, then every mode with "
             "kseg's default export settings; val mIoU of the LiteRT files. old qat_int8: tfmot through the "
             "tf_keras bridge (before issue 16); new: kseg's Keras 3 fake-quant fine-tune (per-channel weights "
             "with batch norm folded, calibrated activation ranges), converted by the int8 mode, with the guard "
             "that keeps post-training int8 where it scores higher on the calibration images.", "",
             "| dataset, model | float32 | int8 | old qat_int8 (tfmot) | new qat_int8 | fine-tuned file, unguarded "
             "| calibration mIoU: QAT / post-training | kept |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        s, tune = row["scores"], row.get("fine_tune", {})
        calib = (f"{tune['qat_miou']:.2f} / {tune['post_training_miou']:.2f}" if "qat_miou" in tune else "-")
        lines.append(f"| {row['dataset']}, {row['model']} | " + " | ".join(cell(s, key) for key in COLUMNS)
                     + f" | {calib} | {tune.get('kept', '-')} |")
    lines += [""]
    for row in rows:
        tune = row.get("fine_tune", {})
        errors = "; ".join(f"{key} failed: {why}" for key, why in row.get("errors", {}).items())
        lines.append(f"- {row['dataset']}, {row['model']}: {row['params'] / 1e6:.2f} M parameters at "
                     f"{row['input_size'][0]}x{row['input_size'][1]}, {row['trained']}; qat_int8 fine-tune "
                     f"{tune.get('steps')} steps, lr {tune.get('learning_rate')}, "
                     f"{tune.get('simulated_layers', '?')} layers simulated; export seconds "
                     + ", ".join(f"{mode} {sec:g}" for mode, sec in row["seconds"].items())
                     + (f"; {errors}" if errors else ""))
    lines += ["", "`python benchmarks/qat_int8.py` (see its docstring for the two passes)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--modes", nargs="+", default=["float32", "int8", "qat_int8"])
    parser.add_argument("--label", default=None, help="store qat_int8 as <label>_qat_int8 (e.g. old)")
    parser.add_argument("--unguarded", action="store_true", help="also score the fine-tuned file where the guard "
                                                                  "kept post-training int8")
    parser.add_argument("--budget", type=float, default=120, help="training seconds per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=venvs.work_dir("qat"), help="data and run folders, reused when present")
    venvs.add_argument(parser, "data", "reads the real datasets")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--append", action="store_true", help="merge into --out's qat_int8.json")
    args = parser.parse_args()

    from learning import prepare
    from qat_recovery import train

    path = os.path.join(args.out, "qat_int8.json")
    rows = {}
    if args.append and os.path.exists(path):
        with open(path) as f:
            rows = {(row["dataset"], row["model"]): row for row in json.load(f)["rows"]}
    for name in args.datasets:
        folder, why = prepare(name, args.work, args.data_python)
        if folder is None:
            print(f"{name}: skipped ({why})", flush=True)
            continue
        for model in args.models:
            run = os.path.join(args.work, "runs", f"{name}-{model}")
            trained = train(folder, run, args.budget, args.seed, model)
            print(f"{name} ({model}): {trained}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(folder, run, tmp, args.modes, args.label, args.unguarded)
            old = rows.get((name, model), {})
            for key in ("scores", "seconds", "errors"):
                row[key] = {**old.get(key, {}), **row[key]}
            row = {**old, **row, "dataset": name, "model": model, "trained": old.get("trained", trained)}
            rows[(name, model)] = row
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w") as f:
                json.dump({"budget": args.budget, "seed": args.seed, "rows": list(rows.values())}, f, indent=2)
            with open(os.path.join(args.out, "qat_int8.md"), "w") as f:
                f.write(report(list(rows.values()), args.budget))
    print(report(list(rows.values()), args.budget))


if __name__ == "__main__":
    main()
