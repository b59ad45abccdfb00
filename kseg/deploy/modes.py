"""The export modes, in one table, and the settings of the modes that calibrate or fine-tune.

Plain data without TensorFlow, so the command line can list the modes and their defaults cheaply.
`kseg.deploy.litert` converts with a mode's `quantization` (`kseg.deploy.onnx_export` writes the ONNX format;
`kseg.deploy.quantizer` the modes whose `converter` is Google's ai-edge-quantizer); `kseg.deploy.stage` runs the
fine-tuning first.

    kseg.deploy.modes.MODES["qat_int8"].fine_tune   # "qat"
    kseg.deploy.modes.MODES["onnx"].suffix          # ".onnx"
    kseg.deploy.modes.MODES["mixed"].converter      # "aeq" (ai-edge-quantizer)
    kseg.deploy.modes.MODES["qat_int4"].quantization  # "int4": fine-tuned, then converted as the int4 mode
    kseg.deploy.modes.POST_TRAINING                 # ("float32", "float16", "dynamic", "int8", "int16x8")

An export request is a mode, an `Artifact` (what the file is: input size, output, I/O type) and an `Origin`
(where it comes from: classes, checkpoint, provenance), with `ExportSettings` for the modes that calibrate
or fine-tune:

    kseg.deploy.modes.Artifact((257, 257), output="labels")
    kseg.deploy.modes.Origin.of(model, source="runs/kseg/best.keras")
"""

import dataclasses
import operator

from kseg.errors import KsegError
from kseg.settings import setting


@dataclasses.dataclass(frozen=True)
class ExportMode:
    name: str
    quantization: str  # the post-training conversion: float32, float16, dynamic, int8, int16x8, int4 or mixed
    fine_tune: str | None  # None, "qat" (quantization-aware training) or "prune" (magnitude pruning)
    calibrates: bool  # needs calibration images (activation ranges)
    summary: str
    format: str = "litert"  # the file format: "litert" (.tflite, ai_edge_litert) or "onnx" (.onnx, onnxruntime)
    converter: str = "tflite"  # who quantizes: "tflite" (TensorFlow's converter) or "aeq" (ai-edge-quantizer)

    @property
    def suffix(self):
        """The artifact's file extension: ".tflite" or ".onnx"."""
        return SUFFIXES[self.format]

    @property
    def needs_data(self):
        """Whether exporting in this mode needs a training split (calibration or fine-tuning)."""
        return self.calibrates or self.fine_tune is not None


_TABLE = (
    # name,            quantization, fine_tune, calibrates, summary[, format, converter]
    ("float32", "float32", None, False, "float32 weights and activations"),
    ("float16", "float16", None, False, "float16 weights (half the size), float compute"),
    ("dynamic", "dynamic", None, False, "int8 weights, float activations"),
    ("int8", "int8", None, True, "full integer, calibrated ranges; uint8 (or int8) input and output"),
    ("int16x8", "int16x8", None, True, "int16 activations, int8 weights, calibrated ranges"),
    ("int4", "int4", None, True, "int4 per-channel convolution weights (the first and last convolution's int8), "
                                 "int8 activations, uint8 (or int8) input and output: smaller than int8, not faster "
                                 "(ai-edge-quantizer)", "litert", "aeq"),
    ("mixed", "mixed", None, True, "full integer except the ops that cost the most mIoU, kept in float: the fewest "
                                   "that keep the drop within --max-drop, chosen by measurement (ai-edge-quantizer)",
     "litert", "aeq"),
    ("qat_int8", "int8", "qat", True, "quantization-aware training, then full integer"),
    ("qat_int4", "int4", "qat", True, "int4 weights learned in a quantization-aware fine-tune (rounded in the forward "
                                      "pass), then the int4 mode: where post-training int4 loses points",
     "litert", "aeq"),
    ("pruned_float32", "float32", "prune", False, "magnitude pruning while fine-tuning, then float32"),
    ("pruned_int8", "int8", "prune", True, "magnitude pruning while fine-tuning, then full integer"),
    ("onnx", "float32", None, False, "ONNX, float32 (onnxruntime and other ONNX runtimes)", "onnx"),
)
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}
MODES = {row[0]: ExportMode(*row) for row in _TABLE}
LITERT = tuple(name for name, mode in MODES.items() if mode.format == "litert")  # the quantization study's default
# TensorFlow's LiteRT conversions without fine-tuning (what a pruned model can be converted with, too).
POST_TRAINING = tuple(name for name in LITERT if MODES[name].fine_tune is None and MODES[name].converter == "tflite")
AEQ = tuple(name for name, mode in MODES.items() if mode.converter == "aeq")  # kseg.deploy.quantizer's modes
# QAT's Adam learning rate by target: int8 adapts without drifting; int4 weights must cross levels 1/7 of a
# channel's range apart (MNI152 U-Net, 300 steps: 1e-4 recovers all of post-training int4's loss, 1e-3 less)
QAT_LEARNING_RATE = {"int8": 1e-5, "int4": 1e-4}
QAT_INT4_MIN_STEPS = 300  # the fewest fine-tuning steps of qat_int4 when qat_steps is None
# Fine-tunes shorter than this run eagerly: TensorFlow traces a train step of a 300-layer model in 15-25 s, about
# 15 eager steps (RefineNet tiny, 2 cores: 25 s traced, 1.5 s a step eager)
EAGER_FINE_TUNE_STEPS = 10
PROMOTIONS = ("float", "int16")  # what the mixed mode turns its sensitive ops into
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
    """How the calibrating and fine-tuning modes run: the one place their defaults live (and their flags'
    help: `kseg export` and `kseg quantize-study` take each as a flag)."""

    num_calibration: int = setting(100, "images that calibrate int8 ranges")
    qat_steps: int | None = setting(None, "quantization-aware training steps (default: one pass over the training "
                                          f"split; qat_int4 at least {QAT_INT4_MIN_STEPS})", kind=int)
    qat_learning_rate: float | None = setting(
        None, "QAT learning rate (default: " + ", ".join(f"qat_{target} {rate:g}" for target, rate in
                                                        QAT_LEARNING_RATE.items()) + ")", flag="--qat-lr", kind=float)
    sparsity: float = setting(0.5, "pruned_* modes: share of zero weights")
    prune_epochs: int = setting(2, "pruned_* modes: fine-tuning passes over the training split")
    batch_size: int = setting(8, "QAT and pruning batch size")
    max_drop: float = setting(0.3, "mixed: the largest mIoU drop from float32 (points, on the calibration images) "
                                   "that full int8 may cost; the fewest ops that keep it stay in float",
                              metavar="POINTS")
    promote: str = setting("float", "mixed: what the sensitive ops become: float (fast on CPUs) or int16 "
                                    "activations (integer-only hardware; LiteRT's CPU runs int16 on reference "
                                    "kernels)", choices=PROMOTIONS)
    float_ops: tuple = setting((), "int4 and mixed: op types that stay in float, e.g. RESIZE_BILINEAR "
                                   "CONCATENATION", kind="list", metavar="OP")
    float_layers: tuple = setting((), "int4 and mixed: layers whose ops stay in float (regular expressions "
                                      "searched in the tensor names, which carry the Keras layer names), e.g. "
                                      "classifier 'decoder_.*'", kind="list", metavar="NAME_REGEX")
    verbose: int = setting(1, "1: a progress bar for every fine-tune and search, 0: one line an artifact",
                           choices=(0, 1))


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What an exported file is: its input size (always stated: there is no default), what it returns
    (per-class "logits" or a uint8 "labels" map) and, for full-integer files, the input and output type
    ("uint8": raw pixels, scale 1 and zero point 0; "int8": pixels - 128)."""

    input_size: tuple[int, int]
    output: str = "logits"
    io_dtype: str = "uint8"

    def __post_init__(self) -> None:
        try:
            size = tuple(operator.index(s) for s in self.input_size)
        except TypeError:
            size = ()
        if len(size) != 2 or min(size) <= 0:
            raise KsegError(f"input_size must be two positive integers (height, width), got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if self.output not in OUTPUTS:
            raise KsegError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.io_dtype not in IO_DTYPES:
            raise KsegError(f"io_dtype must be one of {IO_DTYPES}, got {self.io_dtype!r}")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where an exported file comes from: its class names, the checkpoint it was loaded from (`source`) and
    that checkpoint's provenance (`kseg.provenance.of_checkpoint`), all copied into the file's sidecar."""

    class_names: tuple[str, ...] | None = None  # default: the provenance's
    source: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = self.class_names or self.provenance.get("class_names")
        object.__setattr__(self, "class_names", tuple(names) if names else None)

    @classmethod
    def of(cls, model, source: str | None = None, class_names=None) -> "Origin":
        """The origin of `model` loaded from `source`: class names as given, else as its provenance knows them."""
        from kseg import provenance

        return cls(class_names, source, provenance.of_checkpoint(source, model))

    def with_classes(self, class_names) -> "Origin":
        """This origin with `class_names` where it has none (the training split's, say)."""
        if self.class_names or not class_names:
            return self
        return dataclasses.replace(self, class_names=tuple(class_names))
