"""Compression by fine-tuning: int8 QAT and pruning through tensorflow-model-optimization, int4 QAT in Keras 3.

`bridge` rebuilds a Keras 3 model as a tf_keras twin (`twins` holds those of kseg's own layers);
`qat` and `pruning` fine-tune that twin; `tuning` holds what they share (the fine-tuning loop and
the LiteRT export of a tf_keras model). `qat_int4` fine-tunes the Keras 3 model itself with its int4
kernels simulated, for `kseg.deploy.quantizer`'s int4 mode.
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
from kseg.deploy.compression.tuning import MaskedCrossEntropy, export_tf_keras

__all__ = [
    "FakeQuantConv2D",
    "Keras3Call",
    "MaskedCrossEntropy",
    "OutputQuantizeConfig",
    "export_tf_keras",
    "initialise_ranges",
    "int4_aware_training",
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
