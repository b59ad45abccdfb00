"""Learning benchmark: validation score against wall-clock seconds, for what a user would run.

Contenders, each in its own process, each given the same wall-clock budget on the same folders:
  kseg    `kseg train --data DIR --time-budget B` with every other setting left to kseg
  keras   benchmarks/peers/plain_keras_unet.py: a plain Keras U-Net script that does not use kseg
  smp     benchmarks/peers/smp_unet.py: segmentation_models_pytorch Unet(resnet34), plain PyTorch loop
          (runs in its own venv, see the top of that file; skipped with a note when it is missing)

Datasets: the embedded synthetic set, written as a folder, and real ones from benchmarks/real_data.py.
Scores are computed on the full-size validation images: mIoU over the classes present, and for
two-class data the Dice of the foreground. kseg's final score comes from `kseg evaluate` on its best
checkpoint (what `kseg train` hands the user), its last model's score and its curve from its log.csv
(validation mIoU at each round); the peers report their last model. The peers report their own
(same definitions, see their files). kseg's clock starts when `kseg train` starts (data checks, model
build and tracing count); the peers' clocks start at their first training step.

    python benchmarks/peers/make_venvs.py                             # once: the smp and data venvs
    python benchmarks/learning.py --budget 120                        # every dataset, 2 minutes each
    python benchmarks/learning.py --datasets synthetic --budget 60    # one
Writes benchmarks/results/learning.{json,md,png}. Interpreters: `--smp-python` / $KSEG_SMP_PYTHON and
`--data-python` / $KSEG_DATA_PYTHON, by default the venvs make_venvs.py creates (benchmarks/peers/venvs.py); a
missing one skips its contender or dataset with a line naming the command that creates it. Data and runs go to
`--work` (default ~/.cache/kseg-bench/work/learning, under $KSEG_BENCH_CACHE when set).
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from peers import venvs  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def prepare(name, root, data_python=None):
    """(folder with train/ and val/, None) for `name` ("synthetic" or a benchmarks/real_data.py name), or
    (None, why) when the dataset's package or the data venv is missing. The real datasets are read from packages
    kseg does not need, by `data_python` (default: venvs.python("data"), see benchmarks/peers/make_venvs.py)."""
    folder = os.path.join(root, "data", name)
    if os.path.isdir(os.path.join(folder, "val")):
        return folder, None
    if name == "synthetic":
        subprocess.run([sys.executable, "-m", "kseg.cli", "data", "synth", folder, "--num-images", "480",
                        "--size", "128"], check=True, env=ENV, capture_output=True)
    else:
        python = venvs.python("data", data_python)
        if not os.path.exists(python):
            return None, venvs.missing("data", python)
        result = subprocess.run([python, os.path.join(HERE, "real_data.py"), name, folder], env=ENV,
                                capture_output=True, text=True)
        if result.returncode:
            return None, result.stderr.strip().splitlines()[-1]
    return folder, None


def scores_from_confusion(confusion):
    import numpy as np

    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    iou = np.divide(tp, tp + fp + fn, out=np.zeros_like(tp), where=present)
    dice = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)
    foreground = present.copy()
    foreground[0] = False
    return {"miou": float(iou[present].mean()),
            "dice_fg": float(dice[foreground].mean()) if foreground.any() else 0.0}


def run_kseg(data, budget, out, seed):
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--data", data, "--time-budget", str(budget),
                             "--out", out, "--seed", str(seed), "--verbose", "0"],
                            env=ENV, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode:
        raise RuntimeError(f"kseg train failed:\n{result.stderr[-3000:]}")
    report = os.path.join(out, "evaluate.json")
    subprocess.run([sys.executable, "-m", "kseg.cli", "evaluate", os.path.join(out, "best.keras"), "--data", data,
                    "--split", "val", "--json", report], env=ENV, check=True, capture_output=True)
    with open(report) as f:
        final = scores_from_confusion(json.load(f)["confusion"])
    with open(os.path.join(out, "log.csv"), newline="") as f:
        points = [{"seconds": float(row["seconds"]), "step": int(float(row["step"])),
                   "miou": float(row["val_miou"])} for row in csv.DictReader(f)]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    settings = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    final["miou_last"] = points[-1]["miou"]  # the peers report their last model; kseg keeps its best
    return {"name": "kseg", "points": points, "final": {**final, "seconds": summary["seconds"],
            "steps": summary["steps"], "process_seconds": wall, "overhead_share": summary["overhead_share"]},
            "settings": settings}


def run_peer(name, python, script, data, budget, out, seed):
    if not os.path.exists(python):
        return {"name": name, "skipped": venvs.missing(name, python)}
    started = time.time()
    result = subprocess.run([python, os.path.join(HERE, "peers", script), "--data", data, "--time-budget", str(budget),
                             "--out", out, "--seed", str(seed)], env=ENV, capture_output=True, text=True)
    if result.returncode:
        return {"name": name, "skipped": f"failed: {result.stderr.strip().splitlines()[-1:]}"}
    with open(os.path.join(out, "curve.json")) as f:
        curve = json.load(f)
    curve["name"] = name
    curve["final"]["process_seconds"] = time.time() - started
    return curve


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (dataset, runs) in zip(axes[0], results.items()):
        for run in runs:
            if "points" in run:
                xs = [p["seconds"] for p in run["points"]]
                ax.plot(xs, [100 * p["miou"] for p in run["points"]], marker="o", ms=3, label=run["name"])
        ax.set_title(dataset)
        ax.set_xlabel("seconds")
        ax.set_ylabel("validation mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=None, help="default: synthetic and every real dataset")
    parser.add_argument("--budget", type=float, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", nargs="+", default=["kseg", "keras", "smp"])
    parser.add_argument("--work", default=venvs.work_dir("learning"), help="data and runs go here")
    venvs.add_argument(parser, "smp", "the smp contender")
    venvs.add_argument(parser, "data", "reads the real datasets")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.datasets is None:
        sys.path.insert(0, HERE)
        import real_data

        args.datasets = ["synthetic", *real_data.DATASETS]

    results = {}
    for dataset in args.datasets:
        data, missing = prepare(dataset, args.work, args.data_python)
        if missing:
            print(f"{dataset}: skipped ({missing})", flush=True)
            continue
        runs = []
        for contender in args.contenders:
            out = os.path.join(args.work, "runs", f"{dataset}-{contender}-{int(time.time())}")
            print(f"{dataset}: {contender} for {args.budget:g} s ...", flush=True)
            if contender == "kseg":
                run = run_kseg(data, args.budget, out, args.seed)
            elif contender == "keras":
                run = run_peer("keras", sys.executable, "plain_keras_unet.py", data, args.budget, out, args.seed)
            else:
                run = run_peer("smp", args.smp_python, "smp_unet.py", data, args.budget, out, args.seed)
            runs.append(run)
            if "final" in run:
                f = run["final"]
                print(f"  mIoU {100 * f['miou']:.2f}  Dice fg {100 * f['dice_fg']:.2f}  steps {f['steps']}  "
                      f"process {f['process_seconds']:.0f} s", flush=True)
            else:
                print(f"  skipped: {run['skipped']}", flush=True)
        results[dataset] = runs

    os.makedirs(args.out, exist_ok=True)
    lines = [f"# Learning benchmark ({args.budget:g} s each, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores)", "",
             "| dataset | contender | val mIoU | last model's mIoU | Dice (foreground) | steps | process s "
             "| vs keras (mIoU) "
             "| vs smp (mIoU) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dataset, runs in results.items():
        by_name = {r["name"]: r for r in runs if "final" in r}
        for run in runs:
            if "final" not in run:
                lines.append(f"| {dataset} | {run['name']} | skipped: {run['skipped']} | | | | | | |")
                continue
            f = run["final"]
            ratios = [f"{f['miou'] / by_name[p]['final']['miou']:.2f}x" if p in by_name and by_name[p]["final"]["miou"]
                      else "" for p in ("keras", "smp")]
            last = f.get("miou_last", f["miou"])
            lines.append(f"| {dataset} | {run['name']} | {100 * f['miou']:.2f} | {100 * last:.2f} | "
                         f"{100 * f['dice_fg']:.2f} | {f['steps']} | {f['process_seconds']:.0f} | "
                         f"{ratios[0]} | {ratios[1]} |")
    kseg_settings = {d: next((r.get("settings") for r in runs if r["name"] == "kseg"), None)
                     for d, runs in results.items()}
    lines += ["", "kseg's chosen settings:", ""]
    for dataset, settings in kseg_settings.items():
        lines += [f"- {dataset}:"] + [f"  - `{s}`" for s in settings or []]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.join(args.out, "learning.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "learning.json"), "w") as f:
        json.dump({"budget_s": args.budget, "results": results}, f, indent=2)
    plot(results, os.path.join(args.out, "learning.png"))


if __name__ == "__main__":
    main()
