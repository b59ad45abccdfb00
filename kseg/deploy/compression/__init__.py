"""Compression by fine-tuning: int8 and int4 QAT in Keras 3, pruning through tensorflow-model-optimization.

`fake_quant` simulates the converter's int8 scheme in a Keras 3 forward pass (batch norm folded, per-channel
weights, calibrated activation ranges); `qat_int8` fine-tunes with it for the qat_int8 mode (no tf_keras bridge),
`qat_int4` with int4 kernels for `kseg.deploy.quantizer`'s int4 mode. `bridge` rebuilds a Keras 3 model as a
tf_keras twin (`twins` holds those of kseg's own layers) for `pruning` (tfmot's pruning API) and for `qat`, tfmot's
QAT, no longer behind any export mode (kept for comparison: it lost DeepLabV3+ 0.5-2 mIoU, issue 16); `tuning`
holds what they share (the fine-tuning loop and the LiteRT export of a tf_keras model).
"""

from kseg.deploy.compression import twins  # noqa: F401 - registers the twins of kseg's layers
from kseg.deploy.compression.bridge import (
    Keras3Call,
    OutputQuantizeConfig,
    keras3_call_twin,
    register_quantize_config,
    register_twin,
    to_tf_keras,
)
from kseg.deploy.compression.pruning import prune, prune_to_litert, zero_share
from kseg.deploy.compression.qat import initialise_ranges, qat_to_litert, quantization_aware_training, quantize_twin
from kseg.deploy.compression.qat_int4 import FakeQuantConv2D, int4_aware_training
from kseg.deploy.compression.qat_int8 import int8_aware_training, int8_qat_to_litert
from kseg.deploy.compression.tuning import MaskedCrossEntropy, export_tf_keras

__all__ = [
    "FakeQuantConv2D",
    "Keras3Call",
    "MaskedCrossEntropy",
    "OutputQuantizeConfig",
    "export_tf_keras",
    "initialise_ranges",
    "int4_aware_training",
    "int8_aware_training",
    "int8_qat_to_litert",
    "keras3_call_twin",
    "prune",
    "prune_to_litert",
    "qat_to_litert",
    "quantization_aware_training",
    "quantize_twin",
    "register_quantize_config",
    "register_twin",
    "to_tf_keras",
    "zero_share",
]
