"""Reporting: markdown tables and the plots that kseg's reports show (latency and size against mIoU with their
Pareto fronts, confusion).

    kseg.report.markdown_table(["mode", "mIoU"], [["int8", "71.20"]], align="lr")
"""

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class Scored(Protocol):
    """What `confusion_figure` reads of a `kseg.runtime.evaluation.EvaluationResult`."""

    confusion: np.ndarray
    class_names: list
    scores: dict


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A markdown table; `align` holds one letter per column, "l" (left) or "r" (right; default for all
    but the first column)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def artifacts_table(entries: Sequence[dict], threads: Sequence[int], reference: dict | None = None) -> str:
    """One row per artifact entry of `kseg.deploy.stage` (or the demo's Keras model): size, gzip size, latency at each
    thread count and mIoU; with a `reference` entry, the change of mIoU against it; where measured, the share
    of pixels whose label agrees with the stage's reference artifact (float32)."""
    agreement = any(e.get("agreement") is not None for e in entries)
    header = ["artifact", "mode", "size (MB)", "gzip (MB)", *(f"ms @{t} thr" for t in threads), "mIoU",
              *([f"Δ vs {reference['mode']}"] if reference else []), *(["agrees with float32"] if agreement else [])]
    rows = []
    for e in entries:
        miou = e.get("miou")
        row = [e["artifact"], e["mode"], f"{e['size_bytes'] / 1e6:.2f}",
               f"{e['gzip_bytes'] / 1e6:.2f}" if e.get("gzip_bytes") else "-",
               *(f"{e['latency_ms'][str(t)]:.1f}" if str(t) in e.get("latency_ms", {}) else "-" for t in threads),
               "-" if miou is None else f"{100 * miou:.2f}"]
        if reference:
            known = miou is not None and reference.get("miou") is not None
            row.append(f"{100 * (miou - reference['miou']):+.2f}" if known else "-")
        if agreement:
            row.append("-" if e.get("agreement") is None else f"{100 * e['agreement']:.2f}%")
        rows.append(row)
    return markdown_table(header, rows, "ll" + "r" * (len(header) - 2))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_plot(entries: Sequence[dict], threads: int, path: str) -> str:
    """Latency (ms) against mIoU, one point per entry (dicts with "artifact" or "mode", "latency_ms" by thread
    count, "miou", "size_bytes")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for e in entries:
        x, y = e["latency_ms"][str(threads)], 100 * e["miou"]
        ax.scatter(x, y, s=30 + e["size_bytes"] / 5e4, alpha=0.7)
        ax.annotate(f"{e.get('label', e['mode'])} ({e['size_bytes'] / 1e6:.1f} MB)", (x, y),
                    textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, ms (batch 1, {threads} threads, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("latency versus mIoU (marker area ~ file size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(entries: Sequence[dict], cost: Callable[[dict], float | None]) -> list[dict]:
    """The entries that no other entry beats on both `cost(entry)` (lower is better: latency, size) and mIoU
    (higher is better), cheapest first: the trade-offs worth choosing from. Entries without a cost or mIoU are
    left out."""
    known = [e for e in entries if e.get("miou") is not None and cost(e) is not None]
    front: list[dict] = []
    for e in sorted(known, key=lambda e: (cost(e), -e["miou"])):
        if not front or e["miou"] > front[-1]["miou"]:
            front.append(e)
    return front


def pareto_plot(entries: Sequence[dict], threads: int, path: str) -> str:
    """Two panels, latency (at `threads`) and file size against mIoU, one point per entry, each with its Pareto
    front drawn as a staircase through the entries nothing beats (their labels in bold)."""
    plt = _pyplot()
    from matplotlib import ticker

    costs = (("latency_ms", f"latency, ms (batch 1, {threads} threads, log scale)",
              lambda e: e.get("latency_ms", {}).get(str(threads))),
             ("size", "file size, MB (log scale)", lambda e: e["size_bytes"] / 1e6))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (_, label, cost) in zip(axes, costs):
        front = pareto_front(entries, cost)
        for e in entries:
            if e.get("miou") is None or cost(e) is None:
                continue
            on_front = any(e is f for f in front)
            ax.scatter(cost(e), 100 * e["miou"], s=40 if on_front else 25, alpha=0.8,
                       color="tab:red" if on_front else "tab:blue")
            ax.annotate(e.get("label", e["mode"]), (cost(e), 100 * e["miou"]), textcoords="offset points",
                        xytext=(5, 3), fontsize=8, fontweight="bold" if on_front else "normal")
        if front:
            xs = [cost(e) for e in front]
            ys = [100 * e["miou"] for e in front]
            ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        values = [cost(e) for e in entries if e.get("miou") is not None and cost(e)]
        if values and max(values) > 5 * min(values):  # a log axis where costs span orders of magnitude
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            label = label.replace(", log scale", "").replace(" (log scale)", "")
        ax.set_xlabel(label)
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("latency versus mIoU")
    axes[1].set_title("size versus mIoU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_figure(result: Scored, path: str) -> str:
    """Saves the row-normalised confusion matrix of a `kseg.runtime.evaluation.EvaluationResult` as a PNG."""
    plt = _pyplot()
    confusion = result.confusion.astype(np.float64)
    normalised = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(result.class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(result.class_names)), result.class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(result.class_names)), result.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(normalised):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"confusion (rows sum to 1), mIoU {100 * result.scores['miou']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
