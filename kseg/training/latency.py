"""Choosing the model by latency: the best expected accuracy whose int8 LiteRT latency fits a budget.

    chosen, table = kseg.training.latency.choose(20.0, measure=kseg.deploy.stage.int8_latency, size=(512, 512))
    chosen.model, chosen.kwargs       # e.g. "lraspp", {}
    print(kseg.training.latency.describe(table, 20.0))

`kseg train --max-latency MS` does this before training (`kseg.deploy.stage.choose_by_latency`): candidates are
measured best-ranked first, each built with random weights at its width, converted to full int8 and timed on this
machine at `--latency-size` with `--latency-threads`; the first that fits is trained, and the table (what was
measured, what fits) is stored in the run's config.json. Measuring lives above this module (`measure` is given):
training sits below deployment, so it converts nothing itself.
"""

import dataclasses
import json
import os
from collections.abc import Callable

from kseg.errors import KsegError


@dataclasses.dataclass(frozen=True)
class Candidate:
    model: str
    kwargs: dict
    expected: str  # the published result its rank rests on

    @property
    def label(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.model}({options})" if options else self.model


# Best expected accuracy first: published Cityscapes val mIoU of each design at full resolution, single scale
# (papers' tables): DDRNet-23 79.5 and DDRNet-23-slim 77.8 (Hong et al. 2021, arXiv:2101.06085, table 4);
# SegFormer-B0 76.2 at 1024x1024 (Xie et al. 2021, arXiv:2105.15203, table 1); LR-ASPP MobileNetV3-Large 72.6 and
# -Small 68.4 (Howard et al. 2019, arXiv:1905.02244, table 7); DeepLabV3 MobileNetV2 70.7 (tensorflow/models
# research/deeplab model zoo, mobilenetv2_coco_cityscapes_trainfine), DeepLabV3+ with its decoder placed above it;
# HRNetV2-W18-Small-v1 70.3 (Wang et al. 2020, arXiv:1908.07919, table 3). Narrower widths than published rank
# below their full width (fewer channels, lower accuracy), as does LR-ASPP-Large with its last stage halved (the
# paper's "RF2"); U-Net has no published Cityscapes result of this kind and comes last, as the fallback for small
# budgets.
CANDIDATES = (
    Candidate("ddrnet", {"variant": "23"}, "Cityscapes val 79.5 (DDRNet-23)"),
    Candidate("ddrnet", {}, "Cityscapes val 77.8 (DDRNet-23-slim)"),
    Candidate("segformer", {}, "Cityscapes val 76.2 (SegFormer-B0)"),
    Candidate("lraspp", {}, "Cityscapes val 72.6 (LR-ASPP MobileNetV3-Large)"),
    Candidate("lraspp", {"backbone_kwargs": {"reduced_tail": True}}, "below LR-ASPP-Large (last stage halved: RF2)"),
    Candidate("deeplabv3plus", {}, "above DeepLabV3 MobileNetV2's 70.7 (decoder added)"),
    Candidate("deeplabv3", {"backbone": "mobilenetv2"}, "Cityscapes val 70.7 (DeepLabV3 MobileNetV2)"),
    Candidate("hrnet", {"variant": "w18_small_v1"}, "Cityscapes val 70.3 (HRNetV2-W18-Small-v1)"),
    Candidate("lraspp", {"backbone_kwargs": {"alpha": 0.75}, "head_filters": 64}, "below LR-ASPP-Large (narrower)"),
    Candidate("lraspp", {"backbone": "mobilenetv3_small"}, "Cityscapes val 68.4 (LR-ASPP MobileNetV3-Small)"),
    Candidate("lraspp", {"backbone": "mobilenetv3_small", "backbone_kwargs": {"alpha": 0.5}, "head_filters": 32},
              "below LR-ASPP-Small (narrower)"),
    Candidate("unet", {"filters": 16, "depth": 4}, "no published Cityscapes result: the fallback"),
    Candidate("unet", {"filters": 8, "depth": 3}, "no published Cityscapes result: the narrowest fallback"),
)
SIZE = (512, 512)
THREADS = 2


def choose(budget_ms: float, measure: Callable, candidates=CANDIDATES, size=SIZE, threads: int = THREADS,
           model: str | None = None) -> tuple:
    """(the best-ranked candidate whose measured latency is within `budget_ms`, the table of rows).

    `measure(candidate, size=, threads=)` returns milliseconds. Candidates are measured in rank order and the first
    that fits wins (those below it are not measured); `model` keeps only that architecture's candidates. When none
    fits: a KsegError naming the fastest candidate and its latency.
    """
    if not (isinstance(budget_ms, (int, float)) and budget_ms > 0):
        raise KsegError(f"max_latency must be a positive number of milliseconds, got {budget_ms!r}")
    pool = [c for c in candidates if model in (None, "auto") or c.model == model]
    if not pool:
        names = sorted({c.model for c in candidates})
        raise KsegError(f"no latency candidates for model {model!r}; candidates: {', '.join(names)}")
    table = []
    for rank, candidate in enumerate(pool, start=1):
        ms = float(measure(candidate, size=tuple(size), threads=threads))
        table.append({"rank": rank, "model": candidate.model, "kwargs": candidate.kwargs,
                      "expected": candidate.expected, "int8_ms": ms, "within": ms <= budget_ms})
        if ms <= budget_ms:
            return candidate, table
    fastest = min(table, key=lambda row: row["int8_ms"])
    raise KsegError(f"no candidate runs within {budget_ms:g} ms at {size[0]}x{size[1]} with {threads} threads: the "
                    f"fastest, {Candidate(fastest['model'], fastest['kwargs'], '').label}, takes "
                    f"{fastest['int8_ms']:.1f} ms (int8 LiteRT, this machine)")


def describe(table: list, budget_ms: float, size=SIZE, threads: int = THREADS) -> str:
    """The table a choice was made from, for the console: rank, candidate, int8 latency, expected accuracy."""
    lines = [f"kseg train: choosing the model for {budget_ms:g} ms (int8 LiteRT, {size[0]}x{size[1]}, {threads} "
             "threads, this machine; best expected accuracy first, measured until one fits)"]
    for row in table:
        label = Candidate(row["model"], row["kwargs"], "").label
        mark = "* chosen" if row["within"] else "  over"
        lines.append(f"  {mark} {row['rank']:2d}. {label:62s} {row['int8_ms']:8.1f} ms  {row['expected']}")
    return "\n".join(lines)


def previous(config):
    """The choice stored in `config.out_dir`'s config.json by a run with the same budget, size and threads (a
    resumed run must rebuild the model its checkpoints hold, whatever a new measurement says), as
    (model, kwargs, table); None where there is none or `config.overwrite` is set."""
    path = os.path.join(config.out_dir, "config.json")
    if config.overwrite or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    size = list(config.latency_size or SIZE)
    same = (stored.get("latency_table") and stored.get("max_latency") == config.max_latency
            and list(stored.get("latency_size") or SIZE) == size
            and (stored.get("latency_threads") or THREADS) == (config.latency_threads or THREADS))
    return (stored["model"], stored["model_kwargs"], stored["latency_table"]) if same else None
