"""`from smp_import import smp`: segmentation_models_pytorch in the peer venv, whose torchvision fails to import.

The only torchvision wheel that resolves there (0.28.0) fails on CPU torch ("operator torchvision::nms does
not exist"). Defining the missing operator schemas lets the pure-Python model code import (FACTS.md); no
torchvision operator runs. Shared by the peer scripts that run in that venv (`smp_unet.py`, `smp_latency.py`).
"""

import sys

import torch

try:
    import torchvision  # noqa: F401
except RuntimeError as error:  # CUDA torchvision 0.28.0 on CPU torch
    if "torchvision::nms" not in str(error):
        raise
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
    _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")  # must stay alive
    for op in ("nms", "qnms"):
        _TORCHVISION_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
import segmentation_models_pytorch as smp  # noqa: E402

__all__ = ["smp"]
