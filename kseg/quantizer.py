"""Post-training quantization with Google's ai-edge-quantizer (AEQ): int4 weights, and mixed precision chosen by
measurement.

    info = kseg.quantizer.to_litert(model, "m_mixed.tflite", "mixed", (257, 257), calibration=train,
                                    settings=kseg.modes.ExportSettings(max_drop=0.3))
    info["quantizer"]["promoted"]   # the ops that mixed kept in float, with what each measured

Both modes start from kseg's builtins-only float32 LiteRT model (`kseg.export`), give it the serving signature
AEQ calibrates through, calibrate once on the calibration images (AEQ's moving-average ranges; the input range
is pinned to [0, 255], so a uint8 input is the camera's bytes: scale 1, zero point 0) and let AEQ rewrite it:

- `int4`: int4 symmetric per-channel weights for CONV_2D and FULLY_CONNECTED (the ops whose LiteRT kernels take
  int4 weights next to int8 activations) except the first and the last of them (`int8_ends`), int8 per-channel
  weights elsewhere (depthwise convolutions), int8 activations, uint8 (or int8) input and output. Smaller than
  int8, not faster: XNNPACK has no int4 convolution, so those run on LiteRT's own kernels (measured, a kseg
  U-Net at 128x128, 1 / 2 threads: float32 6.6 / 3.5 ms, int8 2.2 / 1.3 ms, int4 8.3 / 5.9 ms; 1.96, 0.52 and
  0.28 MB).
- `mixed`: full int8 (AEQ), then the ops whose int8 execution adds the most error are promoted to float (or
  to int16 activations, `promote="int16"`) until the mIoU drop from float32 on the calibration images is
  within `max_drop` points, keeping the fewest (`Search`). Float ops run on XNNPACK between a DEQUANTIZE and a
  QUANTIZE and cost little; int16 ops run on reference kernels (measured: 5 promoted convolutions of a
  DeepLabV3+ MobileNetV2 at 128x128, 1 thread: float 2.5 ms, int16 61 ms, plain int8 1.4 ms). Measured on a
  kseg U-Net for MNI152 tissue at 224x192 with `max_drop=0`: one convolution (the first) kept in float, val
  mIoU float32 94.90, TensorFlow's int8 94.67, mixed 95.06, at int8's latency (5.5 ms against 5.8, float32 17.6).

`float_ops` (op types such as RESIZE_BILINEAR) and `float_layers` (regular expressions searched in the op's
output and weight tensor names, which carry the Keras layer names) stay in float in both modes. Sensitivity is
measured on AEQ's own int8 model (`sensitivity`): every tensor of the int8 model against the float model on
the same images, and for each op the error it adds, its output's relative error minus its inputs'.
TensorFlow's QuantizationDebugger (`kseg.study.layer_sensitivity`) feeds each op the dequantized int8
inputs, so it cannot see what quantizing an op's input loses (a tensor whose range one channel dominates);
this measure charges that loss to the op that consumes the tensor.
"""

import contextlib
import dataclasses
import os
import re
import tempfile
import warnings

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.tools import flatbuffer_utils
from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
from ai_edge_quantizer import quantizer as aeq
from ai_edge_quantizer.utils import tfl_interpreter_utils

from kseg import console, export, metrics, modes
from kseg.errors import KsegError
from kseg.metadata import AlignedBuffer
from kseg.runtime import LiteRTModel, labels_from_logits

SIGNATURE = "serving_default"  # AEQ runs a model through a signature; kseg's converter writes none
SENSITIVITY_IMAGES = 8  # images that rank ops (reference kernels, every tensor kept)
MAX_TRIALS = 40  # quantize-and-score trials the mixed search may spend
# An activation calibrated to a near-zero range (an untrained model's deep features: 1e-6 seen) gets a scale
# so small that a fused ReLU6's 6.0 overflows int32 and LiteRT refuses the file ("no_integer_overflow_from_
# quantization"); AEQ writes it anyway. A trained model's ranges are 3 orders of magnitude above this floor.
MIN_RANGE = 1e-3
INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")  # the ops whose LiteRT kernels take int4 weights next to int8 activations
_OP = qtyping.TFLOperationName
_OP_NAMES = {op.value for op in _OP}
_NO_QUANTIZE = algorithm_manager.AlgorithmName.NO_QUANTIZE
_MIN_MAX = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT
_WEIGHT_TYPES = {getattr(tfl.TensorType, name): name.lower() for name in ("FLOAT32", "FLOAT16", "INT8", "INT4",
                                                                           "INT16", "INT32", "UINT8")}


@dataclasses.dataclass(frozen=True)
class Op:
    """One operator of the float graph, as recipes name it."""

    index: int
    name: str  # the builtin op, e.g. CONV_2D
    scope: str  # its output tensor names joined by ";", plus ";": what AEQ matches a recipe's regex against
    inputs: tuple  # names of its activation (non-constant) input tensors
    outputs: tuple  # names of its output tensors
    constants: tuple = ()  # names of its constant inputs (weights, biases): they name the layer too

    @property
    def regex(self):
        """A regular expression that matches this op's scope and no other."""
        return "^" + re.escape(self.scope) + "$"

    def matches(self, pattern):
        """Whether a layer-name pattern is found in its output or weight tensor names (a graph output is named
        "Identity": its weights still carry the layer's name)."""
        return any(re.search(pattern, name) for name in (self.scope, *self.constants))

    def describe(self, model=None):
        """{"op", "tensor", "layer"} for sidecars: the Keras layer is read from the tensor names."""
        return {"op": self.name, "tensor": self.outputs[0] if self.outputs else "",
                "layer": _layer(";".join((self.scope, *self.constants)), model)}


def to_litert(model, path, mode, input_size, calibration, output="logits", io_dtype="uint8", settings=None,
              class_names=None, source=None, origin=None, progress=False, extra=None):
    """Writes `model` as a LiteRT file in an ai-edge-quantizer mode ("int4" or "mixed"); returns the sidecar dict.

    `calibration`: a `kseg.data.Split` (mixed scores on its images and masks) or, for int4, a list of float32
    (1, H, W, 3) arrays. `settings` (a `kseg.modes.ExportSettings`): calibration images, and `max_drop`,
    `promote`, `float_ops`, `float_layers`. The sidecar's "quantizer" entry records the recipe, what stayed in
    float and why, and for mixed what the search measured; `extra` adds entries (what fine-tuned the model).
    """
    with console.quiet(), _no_debug_warning():  # AEQ's progress bars, absl notes on recipe overwrites
        return _to_litert(model, path, mode, input_size, calibration, output, io_dtype,
                          settings or modes.ExportSettings(), class_names, source, origin, progress, extra)


def _to_litert(model, path, mode, input_size, calibration, output, io_dtype, settings, class_names, source, origin,
               progress, extra):
    if modes.get(mode).converter != "aeq":
        raise KsegError(f"export mode {mode!r} is TensorFlow's converter's: export it with kseg.export.to_litert")
    if io_dtype not in modes.IO_DTYPES:
        raise KsegError(f"io_dtype must be one of {modes.IO_DTYPES}, got {io_dtype!r}")
    if calibration is None:
        raise KsegError(f"{mode} calibrates its ranges: it needs calibration images (a data split)")
    input_size = tuple(int(s) for s in input_size)
    float_model = float_flatbuffer(model, input_size, output)
    graph = ops(float_model)
    denylist = Denylist.of(settings, graph)
    images, masks = calibration_set(calibration, input_size, settings.num_calibration)
    ranges = calibrate(aeq_quantizer(float_model, mode, io_dtype, denylist), images, input_name(float_model))
    record = {"tool": f"ai-edge-quantizer {_version()}", "float_ops": list(denylist.ops),
              "float_layers": list(denylist.layers)}
    promoted = []
    if mode == "int4":
        quantized = quantize(aeq_quantizer(float_model, mode, io_dtype, denylist), ranges)
        record["int8_weights"] = [op.describe(model) for op in int8_ends(graph) if not denylist.covers(op)]
    else:
        if masks is None:
            raise KsegError("mixed scores candidate files on labelled images: calibrate it with a data split")
        search = Search(float_model, graph, images, masks, ranges, io_dtype, denylist, settings.promote,
                        num_classes=max(int(model.output_shape[-1]), 2), progress=progress)
        quantized, promoted = search.run(settings.max_drop)
        record.update(search.record(promoted, settings.max_drop, model))
    record["recipe"] = _plain(aeq_quantizer(float_model, mode, io_dtype, denylist, promoted, settings.promote))
    record["in_float"] = [op.describe(model) for op in float_ops_of(quantized)]
    record["weights"] = weight_types(quantized)
    return export.write_litert(quantized, path, model, mode, input_size, calibration, output,
                               settings.num_calibration, class_names, source, origin,
                               extra={**(extra or {}), "quantizer": record})


def float_flatbuffer(model, input_size, output="logits"):
    """kseg's builtins-only float32 LiteRT model (bytes) with a serving signature, as AEQ takes it."""
    return with_signature(export.litert_flatbuffer(model, "float32", input_size, output=output))


def with_signature(flatbuffer, key=SIGNATURE):
    """The model with a signature `key` over its one subgraph (inputs and outputs under their tensor names)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    if any(signature.signatureKey.decode() == key for signature in model.signatureDefs or []):
        return bytes(flatbuffer)
    graph = model.subgraphs[0]

    def tensor_map(index):
        entry = tfl.TensorMapT()
        entry.name, entry.tensorIndex = graph.tensors[index].name.decode(), index
        return entry

    signature = tfl.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, 0
    signature.inputs = [tensor_map(i) for i in graph.inputs]
    signature.outputs = [tensor_map(i) for i in graph.outputs]
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def ops(flatbuffer):
    """The operators of the model's first subgraph, in execution order, as `Op`s."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]

    def names(indices, constant=None):
        return tuple(graph.tensors[i].name.decode() for i in indices if i >= 0 and graph.tensors[i].name and (
            constant is None or _is_constant(model, graph.tensors[i]) == constant))

    found = []
    for index, op in enumerate(graph.operators):
        outputs = names(op.outputs)
        scope = ";".join(outputs) + ";" if outputs else ";".join(names(op.inputs)) + ";"
        found.append(Op(index, flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), scope,
                        names(op.inputs, constant=False), outputs, names(op.inputs, constant=True)))
    return found


def _is_constant(model, tensor):
    data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
    return data is not None and len(data) > 0


@dataclasses.dataclass(frozen=True)
class Denylist:
    """Op types and layer-name patterns that stay in float, and the ops of the graph they name."""

    ops: tuple = ()  # op types, e.g. ("RESIZE_BILINEAR",)
    layers: tuple = ()  # regular expressions searched in tensor names, e.g. ("classifier", "decoder_.*")
    covered: tuple = ()  # the graph's `Op`s that either names

    @classmethod
    def of(cls, settings, graph):
        """The settings' denylist resolved on the graph: an op type the graph lacks or a pattern that matches no
        op is a KsegError that says what the graph has."""
        present = sorted({op.name for op in graph})
        for name in settings.float_ops:
            if name not in present:
                raise KsegError(f"--float-ops {name}: the graph has no {name} op (it has {', '.join(present)})")
        for pattern in settings.float_layers:
            try:
                re.compile(pattern)
            except re.error as error:
                raise KsegError(f"--float-layers {pattern!r} is not a regular expression: {error}") from None
            if not any(op.matches(pattern) for op in graph):
                example = next((name for op in graph if op.name == "CONV_2D" for name in op.constants), "")
                raise KsegError(f"--float-layers {pattern!r} matches no op's tensor names (they look like "
                                f"{example!r})")
        covered = tuple(op for op in graph if op.name in settings.float_ops
                        or any(op.matches(pattern) for pattern in settings.float_layers))
        return cls(tuple(settings.float_ops), tuple(settings.float_layers), covered)

    def covers(self, op):
        return any(op.index == other.index for other in self.covered)


def aeq_quantizer(float_model, mode, io_dtype="uint8", denylist=Denylist(), promoted=(), promote="float"):
    """An AEQ Quantizer for `float_model` with the recipe of `mode` ("int4" or "mixed"), the denylist and the ops
    `promoted` (mixed); `aeq_quantizer(...).get_quantization_recipe()` is the recipe."""
    target = aeq.Quantizer(float_model)
    target.add_static_config(".*", _OP.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    if mode == "int4":
        for name in INT4_OPS:
            target.add_static_config(".*", _OP(name), activation_num_bits=8, weight_num_bits=4)
        for op in int8_ends(ops(float_model)):
            target.add_static_config(op.regex, _OP(op.name), activation_num_bits=8, weight_num_bits=8)
    if io_dtype == "uint8":  # raw pixels in, uint8 scores out, as the int8 mode
        pixels = qtyping.OpQuantizationConfig(
            activation_tensor_config=qtyping.TensorQuantizationConfig(
                num_bits=8, symmetric=False, dtype=qtyping.TensorDataType.UINT),
            compute_precision=qtyping.ComputePrecision.INTEGER)
        for name in (_OP.INPUT, _OP.OUTPUT):
            target.update_quantization_recipe(".*", name, pixels, _MIN_MAX)
    for op in denylist.covered:
        if op.name in _OP_NAMES:  # AEQ leaves the ops it does not know (ARG_MAX, CAST...) in float anyway
            target.update_quantization_recipe(op.regex, _OP(op.name), algorithm_key=_NO_QUANTIZE)
    for op in promoted:
        if promote == "int16":
            target.add_static_config(op.regex, _OP(op.name), activation_num_bits=16, weight_num_bits=8)
        else:
            target.update_quantization_recipe(op.regex, _OP(op.name), algorithm_key=_NO_QUANTIZE)
    return target


def int8_ends(graph):
    """The first and the last op that int4 would give int4 weights (CONV_2D, FULLY_CONNECTED): int4 keeps theirs
    in int8. The first sees the raw image through few weights, the last makes the scores; measured on four kseg
    U-Nets (val mIoU, all int4 -> ends in int8, float32): MNI152 tissue 80.6 -> 87.8 (94.9), DSB2018 nuclei
    92.1 -> 94.1 (94.3), cells3d 95.5 -> 95.7 (95.5), synthetic 85.0 -> 85.1 (85.8), for 0.1% of the size."""
    weighted = [op for op in graph if op.name in INT4_OPS]
    return weighted[:1] + weighted[-1:] if len(weighted) > 1 else weighted


def promotable(op, promote):
    """Whether AEQ can run `op` as `promote` asks: float always; int16 activations where its policy allows."""
    if promote != "int16":
        return True
    try:
        recipe_manager.RecipeManager().add_static_config(op.regex, _OP(op.name), 16, 8)
    except ValueError:
        return False
    return True


def calibrate(target, images, name):
    """AEQ's ranges ({tensor: {"min", "max"}}) for a Quantizer's recipe from the images (float32 (1, H, W, 3)
    fed to the input tensor `name`), the input's pinned to [0, 255], none narrower than `MIN_RANGE`."""
    with console.quiet(), _no_debug_warning():  # progress bars on fd 2
        ranges = target.calibrate({SIGNATURE: [{name: image} for image in images]}, num_threads=os.cpu_count() or 1)
    ranges[name] = {"min": np.zeros_like(ranges[name]["min"]), "max": np.full_like(ranges[name]["max"], 255.0)}
    for entry in ranges.values():
        entry["max"] = np.maximum(entry["max"], entry["min"] + MIN_RANGE)
    return ranges


@contextlib.contextmanager
def _no_debug_warning():
    """Keeps every tensor (calibration, sensitivity) without LiteRT's warning that it is for debugging: it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        yield


def quantize(target, ranges):
    """The model (bytes) a Quantizer writes from calibrated ranges, its weights inside the flatbuffer."""
    with console.quiet(), _no_debug_warning():  # it checks the ranges on an interpreter that keeps every tensor
        result = target.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
    return inline_buffers(bytes(result.quantized_model))


def inline_buffers(flatbuffer):
    """The model with every buffer inside the flatbuffer, 16-byte aligned. AEQ appends the weights of models
    over 256 KB after the flatbuffer (offset and size, the format of models over 2 GB), which LiteRT runs
    but TFLite's metadata tools (`kseg.metadata`) do not take."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    if not any(buffer.offset > 1 for buffer in model.buffers or []):
        return flatbuffer
    model = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    model.buffers = [AlignedBuffer(data=buffer.data if buffer.data is not None and len(buffer.data) else None)
                     for buffer in model.buffers]
    builder = flatbuffers.Builder(len(flatbuffer) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def input_name(flatbuffer):
    """The name of a model's (bytes, with the serving signature) input tensor."""
    return tfl_interpreter_utils.get_input_tensor_names(bytes(flatbuffer), SIGNATURE)[0]


def calibration_set(calibration, input_size, count=modes.ExportSettings.num_calibration, seed=0):
    """(images, masks) at the input size (`kseg.export.calibration_pairs`); masks None for a list of images."""
    if isinstance(calibration, list):
        return calibration, None
    return export.calibration_pairs(calibration, input_size, count, seed)


def tensor_errors(float_model, quantized_model, images):
    """{tensor name: relative RMS error of the quantized model's tensor against the float model's, averaged
    over `images`} for the tensors both models name (reference kernels, every tensor kept)."""
    totals, counts = {}, {}
    with _no_debug_warning():
        interpreters = [tfl_interpreter_utils.create_tfl_interpreter(content, use_xnnpack=False,
                                                                     num_threads=os.cpu_count() or 1)
                        for content in (float_model, quantized_model)]
    name = input_name(float_model)
    for image in images:
        values = []
        for interpreter in interpreters:
            tfl_interpreter_utils.invoke_interpreter_signature(interpreter, {name: image}, SIGNATURE)
            values.append(tfl_interpreter_utils.get_tensor_name_to_content_map(interpreter, dequantize=True))
        reference, quantized = values
        for tensor, want in reference.items():
            got = quantized.get(tensor)
            if got is None or got.shape != want.shape or not np.issubdtype(want.dtype, np.floating):
                continue
            want = want.astype(np.float64)
            error = np.sqrt(np.mean((got.astype(np.float64) - want) ** 2)) / (np.sqrt(np.mean(want**2)) + 1e-12)
            totals[tensor] = totals.get(tensor, 0.0) + error
            counts[tensor] = counts.get(tensor, 0) + 1
    return {tensor: totals[tensor] / counts[tensor] for tensor in totals}


def sensitivity(graph, errors):
    """[(op, added error)] worst first: each op's output error minus its inputs' largest (what the op's
    quantization adds: its input's rounding, its weights', its output's), for ops with a measured output."""
    ranked = []
    for op in graph:
        if not op.outputs or op.outputs[0] not in errors:
            continue
        before = max((errors.get(name, 0.0) for name in op.inputs), default=0.0)
        ranked.append((op, errors[op.outputs[0]] - before))
    ranked.sort(key=lambda pair: -pair[1])
    return ranked


class Search:
    """The mixed search: which ops to promote so that the mIoU drop from float32 stays within a bound.

    `run(max_drop)`: scores full int8; if the drop is larger, ranks the quantized ops (`sensitivity`), finds
    the shortest prefix of the ranking that meets the bound (doubling, then bisection), then drops every
    promoted op the bound does not need (least sensitive first). When even every candidate misses the bound,
    the best set it tried (fewest ops on a tie). Every set it returns was quantized and scored; each trial is
    cached, at most MAX_TRIALS run.
    """

    def __init__(self, float_model, graph, images, masks, ranges, io_dtype, denylist, promote, num_classes,
                 progress=False):
        if promote not in modes.PROMOTIONS:
            raise KsegError(f"promote must be one of {modes.PROMOTIONS}, got {promote!r}")
        self.float_model, self.graph, self.images, self.masks = float_model, graph, images, masks
        self.ranges, self.io_dtype, self.denylist, self.promote = ranges, io_dtype, denylist, promote
        self.num_classes, self.progress = num_classes, progress
        self.trials, self.tried, self.ranked = {}, {}, []  # op indices -> mIoU, -> the ops
        self.float_miou = self._miou(float_model)

    def quantized(self, promoted=()):
        return quantize(aeq_quantizer(self.float_model, "mixed", self.io_dtype, self.denylist, promoted, self.promote),
                        self.ranges)

    def trial(self, promoted, content=None):
        """The mIoU with the ops `promoted`, quantized and scored once (the files are not kept: large models)."""
        key = frozenset(op.index for op in promoted)
        if key not in self.trials:
            self.trials[key] = self._miou(content or self.quantized(promoted))
            self.tried[key] = list(promoted)
            if self.progress:
                print(f"    mixed: {len(promoted)} ops in {self.promote}: mIoU {100 * self.trials[key]:.2f} "
                      f"(float32 {100 * self.float_miou:.2f})", flush=True)
        return self.trials[key]

    def drop(self, promoted):
        return 100 * (self.float_miou - self.trial(promoted))

    def run(self, max_drop):
        """(quantized model bytes, promoted ops)."""
        int8 = self.quantized()
        if 100 * (self.float_miou - self.trial((), int8)) <= max_drop:
            return int8, []
        errors = tensor_errors(self.float_model, int8, self.images[:SENSITIVITY_IMAGES])
        quantized_tensors = _quantized_tensors(int8)
        del int8
        self.ranked = [(op, score) for op, score in sensitivity(self.graph, errors)
                       if op.outputs[0] in quantized_tensors and op.name in _OP_NAMES
                       and not self.denylist.covers(op) and promotable(op, self.promote)]
        candidates = [op for op, _ in self.ranked]

        def meets(count):
            return len(self.trials) < MAX_TRIALS and self.drop(candidates[:count]) <= max_drop

        low, high, count = 0, None, 1
        while count < len(candidates):
            if meets(count):
                high = count
                break
            low, count = count, count * 2
        if high is None:
            if not candidates or self.drop(candidates) > max_drop:  # nothing meets the bound: the best tried
                best = max(self.trials, key=lambda key: (self.trials[key], -len(key)))
                return self.quantized(self.tried[best]), self.tried[best]
            high = len(candidates)
        while high - low > 1:
            middle = (low + high) // 2
            if meets(middle):
                high = middle
            else:
                low = middle
        chosen = candidates[:high]
        for op in reversed(candidates[:high]):  # least sensitive first
            fewer = [other for other in chosen if other is not op]
            if len(self.trials) >= MAX_TRIALS:
                break
            if fewer and self.drop(fewer) <= max_drop:
                chosen = fewer
        return self.quantized(chosen), chosen  # AEQ is deterministic: the file that was scored

    def record(self, chosen, max_drop, model=None):
        """The sidecar's account of the search."""
        score = dict((op.index, value) for op, value in self.ranked)
        miou = self.trial(chosen)
        return {
            "promote": self.promote,
            "max_drop": max_drop,
            "promoted": [{**op.describe(model), "added_error": round(score.get(op.index, 0.0), 6)} for op in chosen],
            "selection": {
                "images": len(self.images),
                "float32_miou": self.float_miou,
                "int8_miou": self.trial(()),
                "miou": miou,
                "drop": 100 * (self.float_miou - miou),
                "met": 100 * (self.float_miou - miou) <= max_drop,
                "trials": len(self.trials),
            },
            "ranking": [{**op.describe(model), "added_error": round(value, 6)} for op, value in self.ranked[:15]],
        }

    def _miou(self, content):
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        with tempfile.TemporaryDirectory(prefix="kseg-mixed-") as folder:
            path = os.path.join(folder, "candidate.tflite")
            with open(path, "wb") as f:
                f.write(content)
            runner = LiteRTModel(path)
            for image, mask in zip(self.images, self.masks):
                output = runner.run(image[0])
                labels = output if runner.output_kind == "labels" else labels_from_logits(output)
                confusion += metrics.confusion_matrix(mask, labels, self.num_classes)
        return metrics.scores(confusion)["miou"]


def _quantized_tensors(flatbuffer):
    """Names of the tensors the model holds as int8 or int16 activations."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    return {t.name.decode() for t in graph.tensors
            if t.type in (tfl.TensorType.INT8, tfl.TensorType.INT16, tfl.TensorType.UINT8)
            and not _is_constant(model, t)}


def float_ops_of(flatbuffer):
    """The ops that compute in float in a quantized model (float32 output; QUANTIZE and DEQUANTIZE aside)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    return [op for op in ops(flatbuffer) if op.name not in ("QUANTIZE", "DEQUANTIZE") and op.outputs
            and graph.tensors[graph.operators[op.index].outputs[0]].type == tfl.TensorType.FLOAT32]


def weight_types(flatbuffer):
    """{type: count} of the weight tensors (constant inputs of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and
    TRANSPOSE_CONV, biases aside) of a model, e.g. {"int4": 40, "int8": 17}."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    counts = {}
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) not in (
                "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            continue
        for position, index in enumerate(op.inputs):
            if position != 1 or index < 0:  # the filter is input 1 (input 0: activations; 2: bias)
                continue
            tensor = graph.tensors[index]
            if not _is_constant(model, tensor):  # a DEQUANTIZE feeds float filters: count its source
                producer = next((p for p in graph.operators if index in p.outputs), None)
                if producer is None or not producer.inputs:
                    continue
                tensor = graph.tensors[producer.inputs[0]]
            kind = _WEIGHT_TYPES.get(tensor.type, str(tensor.type))
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _layer(scope, model=None):
    """The Keras layer behind a LiteRT tensor name like "net/block_1_expand_1/convolution;..." (a name of
    `model`'s layers when one matches, else the first candidate)."""
    candidates = [re.sub(r"_\d+$", "", part.split("/")[1]) for part in scope.split(";") if part.count("/") >= 1]
    if model is not None:
        named = {layer.name for layer in model.layers}
        weighted = {layer.name for layer in model.layers if hasattr(layer, "kernel")}
        for pool in (weighted, named):
            found = next((c for c in candidates if c in pool), None)
            if found:
                return found
    return candidates[0] if candidates else scope.rstrip(";")


def _plain(target):
    """A Quantizer's recipe as plain JSON (its enums as their strings)."""
    import json

    return json.loads(json.dumps(target.get_quantization_recipe(), default=str))


def _version():
    from importlib import metadata

    try:
        return metadata.version("ai-edge-quantizer")
    except metadata.PackageNotFoundError:
        return "unknown"
