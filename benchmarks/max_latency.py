"""Does `kseg train --max-latency` keep its promise once the model is trained?

For each budget: `kseg train --data DIR --max-latency MS --latency-size S --time-budget B` chooses a model by the
int8 latency of fresh candidates (its table is in the run's config.json), trains it; then the trained checkpoint
is exported as full int8 at the same size (`kseg export --modes int8`) and timed at the same threads
(`kseg.runtime.bench`). A row says what was chosen, the latency measured before training, after training, and
whether the trained file is within the budget.

    python benchmarks/max_latency.py --budgets 15 40 --size 512 --train-budget 90
    python benchmarks/max_latency.py --data DIR            # a folder (train/ and val/) instead of the synthetic set

Writes benchmarks/results/max_latency.{md,json} (or --out), stating the host.
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
import learning  # noqa: E402  (the learning benchmark's datasets)
import mobile  # noqa: E402  (the host line)

RESULTS = os.path.join(HERE, "results")


def kseg(*args):
    done = subprocess.run([sys.executable, "-m", "kseg.cli", *args], capture_output=True, text=True, env=learning.ENV)
    if done.returncode:
        raise RuntimeError(f"kseg {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def one_budget(budget, data, size, threads, train_budget, runs, work):
    from kseg.runtime import bench

    out = os.path.join(work, f"run-{budget:g}ms-{int(time.time())}")
    kseg("train", "--data", data, "--max-latency", str(budget), "--latency-size", f"{size}x{size}",
         "--latency-threads", str(threads), "--time-budget", str(train_budget), "--out", out, "--verbose", "0")
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    chosen = next(row for row in config["latency_table"] if row["within"])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    kseg("export", os.path.join(out, "best.keras"), "--out", os.path.join(out, "export"), "--modes", "int8",
         "--input-size", f"{size}x{size}", "--verbose", "0")
    tflite = next(os.path.join(out, "export", name) for name in os.listdir(os.path.join(out, "export"))
                  if name.endswith(".tflite"))
    after = bench.benchmark(tflite, threads=threads, runs=runs)["mean_ms"]
    return {"budget_ms": budget, "model": config["model"], "kwargs": config["model_kwargs"],
            "before_ms": chosen["int8_ms"], "after_ms": after, "within": after <= budget,
            "val_miou": 100 * summary["best_val_miou"], "table": config["latency_table"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 40.0], help="milliseconds")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-budget", type=float, default=90, help="seconds of kseg train per budget")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--data", default=None, help="a folder with train/ and val/ (default: the synthetic set)")
    parser.add_argument("--work", default=learning.venvs.work_dir("max-latency"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    data = args.data or learning.prepare("synthetic", args.work)[0]
    rows = []
    for budget in args.budgets:
        row = one_budget(budget, data, args.size, args.threads, args.train_budget, args.runs, args.work)
        rows.append(row)
        print(f"{budget:g} ms: {row['model']} {row['kwargs']} before {row['before_ms']:.1f} ms, after training "
              f"{row['after_ms']:.1f} ms, within: {row['within']}, val mIoU {row['val_miou']:.1f}", flush=True)
    host = mobile.host()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": host, "size": args.size, "threads": args.threads,
              "train_budget_s": args.train_budget, "data": args.data or "synthetic", "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "max_latency.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# kseg train --max-latency, measured again after training ({args.size}x{args.size}, "
             f"{args.threads} threads)", "",
             f"{result['date']}, {host['summary']}; data: {result['data']}; `--time-budget {args.train_budget:g}`. "
             "Before: the chosen candidate's int8 latency in the run's table (fresh weights, batch-norm statistics "
             "from calibration images); after: `kseg export --modes int8` of the trained best.keras, "
             f"mean of {args.runs} calls.", "",
             "| budget ms | chosen | before ms | after ms | after / before | within | val mIoU |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for row in rows:
        config = ", ".join(f"{k}={v}" for k, v in row["kwargs"].items())
        lines.append(f"| {row['budget_ms']:g} | {row['model']} ({config}) | {row['before_ms']:.1f} "
                     f"| {row['after_ms']:.1f} | {row['after_ms'] / row['before_ms']:.2f} "
                     f"| {'yes' if row['within'] else 'NO'} | {row['val_miou']:.1f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "max_latency.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
