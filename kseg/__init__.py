"""kseg: Keras 3 semantic segmentation, from a model builder to a quantized LiteRT model.

    import kseg
    model = kseg.models.deeplabv3plus(num_classes=6, input_shape=(128, 128, 3))
    model.compile("adam", loss=kseg.losses.CrossEntropy(), metrics=[kseg.metrics.MeanIoU(6)])

`kseg.models`, `kseg.losses` and `kseg.metrics` are backend-agnostic Keras 3 code (TensorFlow and JAX);
`kseg.data`, `kseg.training`, `kseg.runtime` and `kseg.deploy` use TensorFlow. Every submodule is imported
on first use, so `import kseg` (and the command line's start) loads no framework. The README's code map
describes the layout.
"""

import importlib
import importlib.util

from kseg.errors import KsegError

__version__ = "0.1.0"
IGNORE_LABEL = 255  # the mask value of pixels that no loss, metric or score counts
EXPORTS = {"Segmenter": "kseg.runtime.segmenter"}  # kseg.Segmenter: what most users need first, at the top


def __getattr__(name):
    """Subpackages and modules on first use (`kseg.models`, `kseg.deploy.stage`...) and `kseg.Segmenter`
    (`kseg.runtime.segmenter`): `import kseg` loads no framework."""
    if name in EXPORTS:  # by name, like the subpackages: the package root sits below what it exposes
        return getattr(importlib.import_module(EXPORTS[name]), name)
    return submodule(__name__, name)


def submodule(package, name):
    """`package.name` imported, for a package's `__getattr__`; AttributeError where there is no such module."""
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


__all__ = ["IGNORE_LABEL", "KsegError", "Segmenter", "__version__"]
