"""Test-time augmentation: what flips and scales add (or cost) on the learning benchmark's datasets.

For each dataset, one `kseg train --data D --time-budget B` run (every setting kseg's), then `kseg evaluate` of its
best checkpoint on the full-size val images without TTA, with `--tta flip` and with `--tta flip,scales=0.75,1,1.25`
(probabilities averaged over the views; `kseg.runtime.tta`), timing each evaluation. A run folder given by
`--run DATASET=DIR` is evaluated instead of training a new one.

    python benchmarks/tta.py                                          # synthetic and every real dataset, 60 s each
    python benchmarks/tta.py --datasets dsb2018_nuclei --run dsb2018_nuclei=/tmp/runs/dsb

Writes benchmarks/results/tta.{md,json} (or --out), stating the host.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import learning  # noqa: E402  (datasets, scores)
import mobile  # noqa: E402  (the host line)

RESULTS = os.path.join(HERE, "results")
VIEWS = {"none": [], "flip": ["--tta", "flip"], "flip + scales 0.75, 1, 1.25": ["--tta", "flip,scales=0.75,1,1.25"]}


def evaluate(run, data, extra):
    report = os.path.join(run, f"tta-{abs(hash(tuple(extra)))}.json")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kseg.cli", "evaluate", os.path.join(run, "best.keras"), "--data", data,
                    "--split", "val", "--json", report, *extra], env=learning.ENV, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    with open(report) as f:
        scores = learning.scores_from_confusion(json.load(f)["confusion"])
    return {"miou": 100 * scores["miou"], "dice_fg": 100 * scores["dice_fg"], "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["synthetic", "dsb2018_nuclei", "cells3d_nuclei", "mni152_tissue"])
    parser.add_argument("--budget", type=float, default=60, help="seconds of kseg train per dataset")
    parser.add_argument("--run", action="append", default=[], metavar="DATASET=DIR", help="evaluate this run")
    parser.add_argument("--data-python", default=None, help="the data venv's interpreter (see make_venvs.py)")
    parser.add_argument("--work", default=learning.venvs.work_dir("tta"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.run)
    rows = []
    for dataset in args.datasets:
        data, missing = learning.prepare(dataset, args.work, args.data_python)
        if missing:
            print(f"tta: skipping {dataset}: {missing}", flush=True)
            continue
        run = given.get(dataset) or os.path.join(args.work, "runs", f"{dataset}-{int(time.time())}")
        if dataset not in given:
            subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--data", data, "--time-budget",
                            str(args.budget), "--out", run, "--verbose", "0"], env=learning.ENV, check=True,
                           capture_output=True)
        with open(os.path.join(run, "config.json")) as f:
            model = json.load(f)["model"]
        row = {"dataset": dataset, "model": model, "views": {name: evaluate(run, data, extra)
                                                            for name, extra in VIEWS.items()}}
        rows.append(row)
        print(dataset, {name: round(v["miou"], 2) for name, v in row["views"].items()}, flush=True)
    host = mobile.host()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": host, "budget_s": args.budget, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tta.json"), "w") as f:
        json.dump(result, f, indent=2)
    names = list(VIEWS)
    lines = ["# Test-time augmentation on the learning benchmark's datasets", "",
             f"{result['date']}, {host['summary']}. One `kseg train --time-budget {args.budget:g}` model per "
             "dataset; val mIoU (foreground Dice for two classes in brackets) of `kseg evaluate` on full-size val "
             "images; seconds: the whole evaluate command.", "",
             "| dataset | model | " + " | ".join(names) + " | " + " | ".join(f"gain: {n}" for n in names[1:])
             + " | seconds: " + " / ".join(names) + " |",
             "|---|---|" + "---:|" * (2 * len(names) - 1) + "---|"]
    for row in rows:
        views = row["views"]
        scores = " | ".join(f"{views[n]['miou']:.2f} ({views[n]['dice_fg']:.2f})" for n in names)
        gains = " | ".join(f"{views[n]['miou'] - views['none']['miou']:+.2f}" for n in names[1:])
        seconds = " / ".join(f"{views[n]['seconds']:.0f}" for n in names)
        lines.append(f"| {row['dataset']} | {row['model']} | {scores} | {gains} | {seconds} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "tta.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
