"""Fine-tuning from an initialisation against training from scratch, at equal wall-clock.

For each pair SOURCE:TARGET of the learning benchmark's datasets:
  source     `kseg train --data SOURCE --time-budget S` (every setting kseg's): the initialisation
  scratch    `kseg train --data TARGET --time-budget T --model M ...` with the source run's architecture and
             builder arguments, from random weights
  fine-tune  `kseg train --data TARGET --time-budget T --init SOURCE_RUN/best.keras` (kseg's fine-tuning recipe:
             the classifier rebuilt for TARGET's classes, Adam 1e-4, the backbone's batch norm frozen at small batch)
Both target runs are scored by `kseg evaluate` of their best checkpoint on TARGET's full-size val images (mIoU,
foreground Dice), and their validation curves (log.csv) show what each had reached at every round.

    python benchmarks/peers/make_venvs.py data                 # once: the real datasets' venv
    python benchmarks/transfer.py                              # cells3d_nuclei:dsb2018_nuclei mni152_tissue:mni152_csf
    python benchmarks/transfer.py --pairs synthetic:dsb2018_nuclei --source-budget 120 --budget 60

ImageNet weights are not used: keras.applications downloads them and this machine kind has no network (kseg train
starts from them when Keras's cache holds them; see README). Writes benchmarks/results/transfer.{md,json} (or --out).
"""

import argparse
import csv
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


def train_and_score(data, out, budget, extra, seed):
    """`kseg train` then `kseg evaluate` of its best checkpoint on data's val split."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kseg.cli", "train", "--data", data, "--time-budget", str(budget),
                           "--out", out, "--seed", str(seed), "--verbose", "0", *extra],
                          env=learning.ENV, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"kseg train {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    report = os.path.join(out, "evaluate.json")
    subprocess.run([sys.executable, "-m", "kseg.cli", "evaluate", os.path.join(out, "best.keras"), "--data", data,
                    "--split", "val", "--json", report], env=learning.ENV, check=True, capture_output=True)
    with open(report) as f:
        scores = learning.scores_from_confusion(json.load(f)["confusion"])
    with open(os.path.join(out, "log.csv"), newline="") as f:
        curve = [(float(row["seconds"]), float(row["val_miou"])) for row in csv.DictReader(f)]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    start = [line.strip() for line in done.stdout.splitlines() if "start" in line.lower()][:1]
    return {"miou": 100 * scores["miou"], "dice_fg": 100 * scores["dice_fg"], "steps": summary["steps"],
            "seconds": summary["seconds"], "wall_s": wall, "curve": curve, "start_line": start}


def one_pair(source, target, folders, args):
    stamp = int(time.time())
    source_out = os.path.join(args.work, "runs", f"{source}-source-{stamp}")
    row = {"source": source, "target": target,
           "source_run": train_and_score(folders[source], source_out, args.source_budget, [], args.seed)}
    with open(os.path.join(source_out, "config.json")) as f:
        config = json.load(f)
    model_args = [arg for key, value in (config.get("model_kwargs") or {}).items()
                  for arg in ("--model-arg", f"{key}={json.dumps(value)}")]
    row["model"], row["model_kwargs"] = config["model"], config.get("model_kwargs") or {}
    row["scratch"] = train_and_score(folders[target], os.path.join(args.work, "runs", f"{target}-scratch-{stamp}"),
                                     args.budget, ["--model", config["model"], *model_args, "--pretrained", "none"],
                                     args.seed)
    row["fine_tune"] = train_and_score(folders[target], os.path.join(args.work, "runs", f"{target}-init-{stamp}"),
                                       args.budget, ["--init", os.path.join(source_out, "best.keras")], args.seed)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["cells3d_nuclei:dsb2018_nuclei", "mni152_tissue:mni152_csf"],
                        help="SOURCE:TARGET dataset names (synthetic or benchmarks/real_data.py names)")
    parser.add_argument("--source-budget", type=float, default=120, help="seconds of the source run")
    parser.add_argument("--budget", type=float, default=60, help="seconds of each target run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-python", default=None, help="the data venv's interpreter (see make_venvs.py)")
    parser.add_argument("--work", default=learning.venvs.work_dir("transfer"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    pairs = [tuple(pair.split(":", 1)) for pair in args.pairs]
    folders = {}
    for name in sorted({name for pair in pairs for name in pair}):
        folders[name], missing = learning.prepare(name, args.work, args.data_python)
        if missing:
            print(f"transfer: skipping {name}: {missing}", flush=True)
    rows = []
    for source, target in pairs:
        if not (folders.get(source) and folders.get(target)):
            continue
        row = one_pair(source, target, folders, args)
        rows.append(row)
        print(f"{source} -> {target} ({row['model']}): scratch mIoU {row['scratch']['miou']:.2f}, fine-tuned "
              f"{row['fine_tune']['miou']:.2f}", flush=True)
    host = mobile.host()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": host, "source_budget_s": args.source_budget,
              "budget_s": args.budget, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "transfer.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Fine-tuning against training from scratch, {args.budget:g} s each", "",
             f"{result['date']}, {host['summary']}. Source runs: `kseg train --time-budget {args.source_budget:g}`; "
             "target runs start from random weights (scratch) or from the source run's best.keras (`--init`); "
             "scores: `kseg evaluate` of each best checkpoint on the target's full-size val images.", "",
             "| source -> target | model | source val mIoU | scratch mIoU | fine-tuned mIoU | fine-tuned / scratch "
             "| scratch fg Dice | fine-tuned fg Dice | steps scratch / fine-tuned |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        scratch, tuned = row["scratch"], row["fine_tune"]
        ratio = tuned["miou"] / max(scratch["miou"], 1e-9)
        lines.append(f"| {row['source']} -> {row['target']} | {row['model']} | {row['source_run']['miou']:.2f} "
                     f"| {scratch['miou']:.2f} | {tuned['miou']:.2f} | {ratio:.3f} "
                     f"| {scratch['dice_fg']:.2f} | {tuned['dice_fg']:.2f} | {scratch['steps']} / {tuned['steps']} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "transfer.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
