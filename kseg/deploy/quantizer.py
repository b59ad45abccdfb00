"""Post-training quantization with Google's ai-edge-quantizer (AEQ): int4 weights, and mixed precision chosen by
measurement.

    info = kseg.deploy.quantizer.to_litert(model, "m_mixed.tflite", mode="mixed",
                                           artifact=kseg.deploy.modes.Artifact((257, 257)), calibration=train,
                                           settings=kseg.deploy.modes.ExportSettings(max_drop=0.3))
    info["quantizer"]["promoted"]   # the ops that mixed kept in float, with what each measured

Both modes start from kseg's builtins-only float32 LiteRT model (`kseg.deploy.litert`), give it the serving signature
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
  within `max_drop` points, keeping the fewest (`kseg.deploy.mixed_precision.Search`). Float ops run on XNNPACK
  between a DEQUANTIZE and a QUANTIZE and cost little; int16 ops run on reference kernels (measured: 5
  promoted convolutions of a DeepLabV3+ MobileNetV2 at 128x128, 1 thread: float 2.5 ms, int16 61 ms, plain
  int8 1.4 ms). Measured on a kseg U-Net for MNI152 tissue at 224x192 with `max_drop=0`: one convolution (the
  first) kept in float, val mIoU float32 94.90, TensorFlow's int8 94.67, mixed 95.06, at int8's latency
  (5.5 ms against 5.8, float32 17.6).
  The search is `kseg.deploy.mixed_precision`'s; reading the graph and naming its ops, `kseg.deploy.litert_graph`'s.

`float_ops` (op types such as RESIZE_BILINEAR) and `float_layers` (regular expressions searched in the op's
output and weight tensor names, which carry the Keras layer names) stay in float in both modes.
"""

import os

import numpy as np
from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
from ai_edge_quantizer import quantizer as aeq

from kseg import console
from kseg.deploy import litert, modes, sidecar
from kseg.deploy.litert_graph import (
    SIGNATURE,
    Denylist,
    float_ops_of,
    inline_buffers,
    input_name,
    no_debug_warning,
    ops,
    weight_types,
    with_signature,
)
from kseg.deploy.mixed_precision import Search
from kseg.errors import KsegError

# An activation calibrated to a near-zero range (an untrained model's deep features: 1e-6 seen) gets a scale
# so small that a fused ReLU6's 6.0 overflows int32 and LiteRT refuses the file ("no_integer_overflow_from_
# quantization"); AEQ writes it anyway. A trained model's ranges are 3 orders of magnitude above this floor.
MIN_RANGE = 1e-3
INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")  # the ops whose LiteRT kernels take int4 weights next to int8 activations
_OP = qtyping.TFLOperationName
_OP_NAMES = {op.value for op in _OP}
_NO_QUANTIZE = algorithm_manager.AlgorithmName.NO_QUANTIZE
_MIN_MAX = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT


def to_litert(model, path: str, *, mode: str, artifact: modes.Artifact, calibration,
              origin: modes.Origin | None = None, settings: modes.ExportSettings | None = None,
              progress: bool = False, extras: dict | None = None) -> dict:
    """Writes `model` as a LiteRT file in an ai-edge-quantizer mode ("int4" or "mixed"); returns the sidecar dict.

    `calibration`: a `kseg.data.Split` (mixed scores on its images and masks) or, for int4, a list of float32
    (1, H, W, 3) arrays. `settings` (a `kseg.deploy.modes.ExportSettings`): calibration images, and `max_drop`,
    `promote`, `float_ops`, `float_layers`. The sidecar's "quantizer" entry records the recipe, what stayed in
    float and why, and for mixed what the search measured; `extras` adds entries (what fine-tuned the model).
    """
    spec = modes.get(mode)
    if spec.converter != "aeq":
        raise KsegError(f"export mode {mode!r} is TensorFlow's converter's: use kseg.deploy.litert.to_litert")
    if spec.fine_tune is not None:
        raise KsegError(f"export mode {mode!r} fine-tunes first: export it with kseg.deploy.stage.convert")
    if calibration is None:
        raise KsegError(f"{mode} calibrates its ranges: it needs calibration images (a data split)")
    settings = settings or modes.ExportSettings()
    with console.quiet(), no_debug_warning():  # AEQ's progress bars, absl notes on recipe overwrites
        quantized, record = _quantized(model, mode=mode, artifact=artifact, calibration=calibration,
                                       settings=settings, progress=progress)
    return litert.write_litert(quantized, path, model=model, mode=mode, artifact=artifact, origin=origin,
                               calibration=sidecar.calibration_record(mode, calibration, settings.num_calibration),
                               extras={**(extras or {}), "quantizer": record})


def _quantized(model, *, mode, artifact, calibration, settings, progress):
    """(the quantized flatbuffer, the sidecar's "quantizer" record)."""
    io_dtype = artifact.io_dtype
    float_model = float_flatbuffer(model, artifact)
    graph = ops(float_model)
    denylist = Denylist.of(settings, graph)
    images, masks = calibration_set(calibration, artifact.input_size, settings.num_calibration)
    ranges = calibrate(aeq_quantizer(float_model, mode=mode, io_dtype=io_dtype, denylist=denylist), images,
                       input_name(float_model))
    record = {"tool": f"ai-edge-quantizer {_version()}", "float_ops": list(denylist.ops),
              "float_layers": list(denylist.layers)}
    promoted = []
    if mode == "int4":
        quantized = quantize(aeq_quantizer(float_model, mode=mode, io_dtype=io_dtype, denylist=denylist), ranges)
        record["int8_weights"] = [op.describe(model) for op in int8_ends(graph) if not denylist.covers(op)]
    else:
        if masks is None:
            raise KsegError("mixed scores candidate files on labelled images: calibrate it with a data split")
        promote = settings.promote

        def build(promoted):
            return quantize(aeq_quantizer(float_model, mode=mode, io_dtype=io_dtype, denylist=denylist,
                                          promoted=promoted, promote=promote), ranges)

        search = Search(float_model, graph, images, masks, build=build, promote=promote,
                        can_promote=lambda op: op.name in _OP_NAMES and not denylist.covers(op)
                        and promotable(op, promote),
                        num_classes=max(int(model.output_shape[-1]), 2), progress=progress)
        quantized, promoted = search.run(settings.max_drop)
        record.update(search.record(promoted, settings.max_drop, model))
    record["recipe"] = _plain(aeq_quantizer(float_model, mode=mode, io_dtype=io_dtype, denylist=denylist,
                                            promoted=promoted, promote=settings.promote))
    record["in_float"] = [op.describe(model) for op in float_ops_of(quantized)]
    record["weights"] = weight_types(quantized)
    return quantized, record


def float_flatbuffer(model, artifact: modes.Artifact) -> bytes:
    """kseg's builtins-only float32 LiteRT model (bytes) with a serving signature, as AEQ takes it."""
    return with_signature(litert.litert_flatbuffer(model, mode="float32", artifact=artifact))


def aeq_quantizer(float_model: bytes, *, mode: str, io_dtype: str = "uint8", denylist: Denylist | None = None,
                  promoted=(), promote: str = "float"):
    """An AEQ Quantizer for `float_model` with the recipe of `mode` ("int4" or "mixed"), the denylist and the ops
    `promoted` (mixed); `aeq_quantizer(...).get_quantization_recipe()` is the recipe."""
    denylist = denylist or Denylist()
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
    U-Nets (val mIoU, all int4 -> ends in int8, float32; one run): MNI152 tissue 80.6 -> 87.8 (94.9), DSB2018 nuclei
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
    with console.quiet(), no_debug_warning():  # progress bars on fd 2
        ranges = target.calibrate({SIGNATURE: [{name: image} for image in images]}, num_threads=os.cpu_count() or 1)
    ranges[name] = {"min": np.zeros_like(ranges[name]["min"]), "max": np.full_like(ranges[name]["max"], 255.0)}
    for entry in ranges.values():
        entry["max"] = np.maximum(entry["max"], entry["min"] + MIN_RANGE)
    return ranges


def quantize(target, ranges):
    """The model (bytes) a Quantizer writes from calibrated ranges, its weights inside the flatbuffer."""
    with console.quiet(), no_debug_warning():  # it checks the ranges on an interpreter that keeps every tensor
        result = target.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
    return inline_buffers(bytes(result.quantized_model))


def calibration_set(calibration, input_size, count=modes.ExportSettings.num_calibration, seed=0):
    """(images, masks) at the input size (`kseg.deploy.litert.calibration_pairs`); masks None for a list of images."""
    if isinstance(calibration, list):
        return calibration, None
    return litert.calibration_pairs(calibration, input_size, count, seed)


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
