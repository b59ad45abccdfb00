"""kseg: Keras 3 semantic segmentation, from a model builder to a quantized LiteRT model.

    import kseg
    model = kseg.models.deeplabv3plus(num_classes=6, input_shape=(128, 128, 3))
    model.compile("adam", loss=kseg.losses.CrossEntropy(), metrics=[kseg.metrics.MeanIoU(6)])

`kseg.models`, `kseg.losses` and `kseg.metrics` are backend-agnostic Keras 3 code (TensorFlow, JAX,
PyTorch). `kseg.data`, `kseg.training`, `kseg.evaluation` and `kseg.export` use TensorFlow and are
imported on first use.
"""

import importlib

from kseg import losses, metrics, models
from kseg.errors import KsegError

__version__ = "0.1.0"

_LAZY = ("data", "training", "evaluation", "export", "quantization", "study", "bench", "complexity", "demo", "viz")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"kseg.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


__all__ = ["KsegError", "losses", "metrics", "models", *_LAZY]
