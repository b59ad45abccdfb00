"""Training: the loop (`kseg.training.loop`), the recipe that fills in what the user left out
(`kseg.training.recipe`) and multi-worker training (`kseg.training.distribute`).

    import kseg
    result = kseg.training.train(kseg.training.TrainConfig(data="synthetic", epochs=2, out_dir="runs/demo"))
"""

from kseg.training.loop import TrainConfig, TrainResult, build_and_compile, resolve, save_atomic, train

__all__ = ["TrainConfig", "TrainResult", "build_and_compile", "resolve", "save_atomic", "train"]
