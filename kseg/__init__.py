"""kseg: Keras 3 semantic segmentation, from a model builder to a quantized LiteRT model.

    import kseg
    model = kseg.models.deeplabv3plus(num_classes=6, input_shape=(128, 128, 3))
    model.compile("adam", loss=kseg.losses.CrossEntropy(), metrics=[kseg.metrics.MeanIoU(6)])

`kseg.models`, `kseg.losses` and `kseg.metrics` are backend-agnostic Keras 3 code (TensorFlow, JAX,
PyTorch); the deployment modules (`kseg.runtime`, `kseg.deploy.litert`, `kseg.deploy.compression`, `kseg.deploy.stage`)
use TensorFlow. Every submodule is imported on first use, so `import kseg` (and the command line's
start) loads no framework. The README's code map describes the layout.
"""

import importlib

from kseg.errors import KsegError

__version__ = "0.1.0"
IGNORE_LABEL = 255  # the mask value of pixels that no loss, metric or score counts

_LAZY = ("models", "losses", "metrics", "data", "training", "recipe", "runtime", "evaluation", "bench", "export",
         "compression", "stage", "study", "complexity", "demo", "viz", "report", "modes", "files", "provenance")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"kseg.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")


__all__ = ["IGNORE_LABEL", "KsegError", "__version__", *_LAZY]
