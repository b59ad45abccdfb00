"""Training: the loop (`kseg.training.loop`), what it is told (`kseg.training.config`), the recipe that fills in
what the user left out (`kseg.training.recipe`), its pace (`kseg.training.schedule`), its files
(`kseg.training.run_folder`) and multi-worker training (`kseg.training.distribute`).

    import kseg
    result = kseg.training.train(kseg.training.TrainConfig(data="synthetic", epochs=2, out_dir="runs/demo"))

The names below load their module on first use: `kseg.training.config` alone needs no framework.
"""

import importlib

from kseg.training.config import TrainConfig, TrainResult

_IN = {"train": "loop", "resolve": "loop", "build_and_compile": "loop", "save_atomic": "run_folder"}

__all__ = ["TrainConfig", "TrainResult", *_IN]


def __getattr__(name):
    if name in _IN:
        return getattr(importlib.import_module(f"kseg.training.{_IN[name]}"), name)
    import kseg

    return kseg.submodule(__name__, name)
