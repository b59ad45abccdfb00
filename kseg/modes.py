"""The export modes, in one table, and the settings of the modes that calibrate or fine-tune.

Plain data without TensorFlow, so the command line can list the modes and their defaults cheaply.
`kseg.export` converts with a mode's `quantization`; `kseg.stage` runs the fine-tuning first.

    kseg.modes.MODES["qat_int8"].fine_tune   # "qat"
    kseg.modes.POST_TRAINING                 # ("float32", "float16", "dynamic", "int8", "int16x8")
"""

import dataclasses

from kseg.errors import KsegError


@dataclasses.dataclass(frozen=True)
class ExportMode:
    name: str
    quantization: str  # the post-training conversion: float32, float16, dynamic, int8 or int16x8
    fine_tune: str | None  # None, "qat" (quantization-aware training) or "prune" (magnitude pruning)
    calibrates: bool  # needs calibration images (activation ranges)
    summary: str

    @property
    def needs_data(self):
        """Whether exporting in this mode needs a training split (calibration or fine-tuning)."""
        return self.calibrates or self.fine_tune is not None


_TABLE = (
    # name,            quantization, fine_tune, calibrates, summary
    ("float32", "float32", None, False, "float32 weights and activations"),
    ("float16", "float16", None, False, "float16 weights (half the size), float compute"),
    ("dynamic", "dynamic", None, False, "int8 weights, float activations"),
    ("int8", "int8", None, True, "full integer, calibrated ranges; uint8 (or int8) input and output"),
    ("int16x8", "int16x8", None, True, "int16 activations, int8 weights, calibrated ranges"),
    ("qat_int8", "int8", "qat", True, "quantization-aware training, then full integer"),
    ("pruned_float32", "float32", "prune", False, "magnitude pruning while fine-tuning, then float32"),
    ("pruned_int8", "int8", "prune", True, "magnitude pruning while fine-tuning, then full integer"),
)
MODES = {row[0]: ExportMode(*row) for row in _TABLE}
POST_TRAINING = tuple(name for name, mode in MODES.items() if mode.fine_tune is None)
OUTPUTS = ("logits", "labels")
IO_DTYPES = ("uint8", "int8")


def get(name):
    """The ExportMode called `name`; a KsegError that lists the modes for an unknown one."""
    try:
        return MODES[name]
    except KeyError:
        raise KsegError(f"unknown export mode {name!r}; available: {', '.join(MODES)}") from None


@dataclasses.dataclass
class ExportSettings:
    """How the calibrating and fine-tuning modes run: the one place their defaults live."""

    num_calibration: int = 100  # images that calibrate int8 ranges
    qat_steps: int | None = None  # quantization-aware training steps; None: one pass over the training split
    qat_learning_rate: float = 1e-5  # small, so the model adapts to quantization without drifting
    sparsity: float = 0.5  # pruned_* modes: share of zero weights
    prune_epochs: int = 2
    batch_size: int = 8  # QAT and pruning batch size
