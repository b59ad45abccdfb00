"""Segmentation architectures as Keras 3 functional models, and the registry that names them.

    model = kseg.models.get("deeplabv3plus", num_classes=21, input_shape=(257, 257, 3))
    kseg.models.names()  # every registered architecture

Every model takes RGB pixels in [0, 255] (normalisation is inside the graph) of any size and
returns per-pixel logits of the same height and width.
"""

from kseg.models import backbones, blocks, custom_layers
from kseg.models.ddrnet import ddrnet
from kseg.models.deeplabv3 import deeplabv3
from kseg.models.deeplabv3plus import deeplabv3plus
from kseg.models.fcn import fcn8s, fcn16s, fcn32s
from kseg.models.hrnet import hrnet
from kseg.models.lraspp import lraspp
from kseg.models.pretrained import from_pretrained, save_pretrained
from kseg.models.refinenet import refinenet
from kseg.models.registry import architecture, get, names, register
from kseg.models.segformer import segformer
from kseg.models.segnet import segnet
from kseg.models.unet import unet

__all__ = [
    "architecture", "backbones", "blocks", "custom_layers", "ddrnet", "deeplabv3", "deeplabv3plus", "fcn8s",
    "fcn16s", "fcn32s", "from_pretrained", "get", "hrnet", "lraspp", "names", "refinenet", "register",
    "save_pretrained", "segformer", "segnet", "unet",
]
