"""Conversion: a Keras model to a builtins-only LiteRT file (post-training modes).

    kseg.deploy.litert.to_litert(model, "model_int8.tflite", mode="int8",
                                 artifact=kseg.deploy.modes.Artifact((257, 257)), calibration=train_split)

LiteRT files use builtin ops only (what phones and microcontrollers run); a model that would need
TensorFlow (Flex) ops fails with an ExportError naming them. Full-int8 models take uint8 RGB pixels
(scale 1, zero point 0: feed the camera's bytes as they are) and return uint8. Every artifact gets
a JSON sidecar (`<file>.json`, `kseg.deploy.sidecar`) that says classes, input size, normalisation, output,
quantization and provenance. Logit files also carry TFLite Model Metadata (`kseg.deploy.metadata`: RGB input
in [0, 255], class names, softmax), so MediaPipe's ImageSegmenter runs them as they are. The modes that fine-tune
first (QAT, pruning) are `kseg.deploy.stage`'s; running a file is `kseg.runtime`'s.
"""

import re

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.tools import flatbuffer_utils
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from kseg import console
from kseg.deploy import gpu, metadata, modes, sidecar
from kseg.errors import ExportError, KsegError, first_line

CALIBRATION_IMAGES = modes.ExportSettings.num_calibration
GPU_CHECKED = ("float32", "float16")  # the modes whose files a phone's GPU delegate can run


def _serving_function(model, input_size, output, batch_size=1):
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([batch_size, height, width, 3], tf.float32, name="image")])
    def serve(image):
        logits = tf.cast(model(image, training=False), tf.float32)
        if output == "labels":
            if logits.shape[-1] == 1:
                return {"labels": tf.cast(logits[..., 0] > 0, tf.uint8)}
            return {"labels": tf.cast(tf.argmax(logits, axis=-1), tf.uint8)}
        return {"logits": logits}

    return serve


def calibration_images(split, input_size, count=CALIBRATION_IMAGES, seed=0):
    """Up to `count` float32 images (1, H, W, 3) resized to `input_size`, for int8 calibration.

    The first image gets one black and one white pixel, so the input range calibrates to exactly
    [0, 255]: the int8 model's uint8 input is then the raw pixel value (scale 1, zero point 0).
    """
    return calibration_pairs(split, input_size, count, seed)[0]


def calibration_pairs(split, input_size, count=CALIBRATION_IMAGES, seed=0):
    """(images, masks): the images `calibration_images` gives and their masks (uint8 (H, W), resized with
    nearest neighbour), for choices scored by mIoU on the calibration images."""
    images, masks = [], []
    for image, mask in split.examples.shuffle(1024, seed=seed).take(count):
        images.append(tf.image.resize(tf.cast(image, tf.float32), input_size).numpy()[None])
        masks.append(tf.image.resize(tf.cast(mask, tf.uint8)[..., None], input_size, method="nearest").numpy()[..., 0])
    if not images:
        raise KsegError("calibration needs at least one image")
    images[0][0, 0, 0], images[0][0, 0, 1] = 0.0, 255.0
    return images, masks


def litert_converter(model, *, mode: str, artifact: modes.Artifact, calibration=None,
                     num_calibration: int = CALIBRATION_IMAGES):
    """A `tf.lite.TFLiteConverter` set up for a post-training `mode` with builtin ops only (what `to_litert` runs)."""
    spec = modes.get(mode)
    if spec.format != "litert":
        raise KsegError(f"export mode {mode!r} does not write LiteRT: export it with kseg.deploy.stage.convert")
    if spec.fine_tune:
        raise KsegError(f"export mode {mode!r} fine-tunes the model first: export it with kseg.deploy.stage.convert")
    if spec.converter != "tflite":
        raise KsegError(f"export mode {mode!r} is ai-edge-quantizer's: export it with kseg.deploy.stage.convert "
                        "(or kseg.deploy.quantizer.to_litert)")
    serve = _serving_function(model, artifact.input_size, artifact.output).get_concrete_function()
    # Freeze the weights ourselves: handing the converter the model as trackable object can leave
    # resource variables (READ_VARIABLE ops, unfolded batch norm) in the file.
    frozen = convert_variables_to_constants_v2(serve)
    with console.quiet():  # absl: "consider providing the trackable_obj": we froze the weights on purpose
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if spec.calibrates:
        if calibration is None:
            raise KsegError(f"{mode} export needs calibration images (a data split)")
        images = calibration if isinstance(calibration, list) else calibration_images(
            calibration, artifact.input_size, num_calibration)
        converter.representative_dataset = lambda: ([image] for image in images)
        if mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.as_dtype(artifact.io_dtype)
            if artifact.output == "logits":
                converter.inference_output_type = tf.as_dtype(artifact.io_dtype)
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
    return converter


def to_litert(model, path: str, *, mode: str, artifact: modes.Artifact, origin: modes.Origin | None = None,
              calibration=None, num_calibration: int = CALIBRATION_IMAGES, extras: dict | None = None) -> dict:
    """Converts a Keras model to a builtins-only LiteRT file (written atomically); returns the sidecar dict.

    `calibration`: a `kseg.data.Split` or a list of float32 (1, H, W, 3) arrays, needed by "int8"
    and "int16x8". `origin`: classes, checkpoint and provenance (default: `Origin.of(model)`).
    """
    flatbuffer = litert_flatbuffer(model, mode=mode, artifact=artifact, calibration=calibration,
                                   num_calibration=num_calibration)
    return write_litert(flatbuffer, path, model=model, mode=mode, artifact=artifact, origin=origin,
                        calibration=sidecar.calibration_record(mode, calibration, num_calibration), extras=extras)


def litert_flatbuffer(model, *, mode: str, artifact: modes.Artifact, calibration=None,
                      num_calibration: int = CALIBRATION_IMAGES) -> bytes:
    """The converted LiteRT model (bytes, no metadata yet) of a post-training `mode`; a conversion that fails
    is an ExportError naming the ops LiteRT lacks."""
    converter = litert_converter(model, mode=mode, artifact=artifact, calibration=calibration,
                                 num_calibration=num_calibration)
    try:
        with console.quiet():  # the converter prints its settings to fd 2; errors come back as exceptions
            return converter.convert()
    except Exception as error:  # ConverterError carries MLIR diagnostics: keep the op names only
        raise _conversion_error(model, mode, error) from error


def write_litert(flatbuffer: bytes, path: str, *, model, mode: str, artifact: modes.Artifact,
                 origin: modes.Origin | None = None, calibration: dict | None = None,
                 extras: dict | None = None) -> dict:
    """Publishes a converted model as every kseg LiteRT file is published: its int8 graph rewritten where that is
    faster (`fast_uint8_ends`, `fold_constant_multiplies`), TFLite metadata embedded, then the
    file and its sidecar (`calibration`: `sidecar.calibration_record`'s; plus the `extras` entries; float32 and float16
    files also get `"gpu"`, `kseg.deploy.gpu.check`'s report); returns the sidecar dict."""
    origin = origin if origin is not None else modes.Origin.of(model)
    flatbuffer = fold_constant_multiplies(fast_uint8_ends(flatbuffer))
    flatbuffer, embedded = _with_metadata(flatbuffer, origin.class_names, int(model.output_shape[-1]))
    extras = {"metadata": embedded, **(extras or {})}
    if mode in GPU_CHECKED:  # what a phone's GPU delegate would run (kseg.deploy.gpu)
        extras["gpu"] = gpu.check(flatbuffer)
    return sidecar.publish(flatbuffer, path, model=model, mode=mode, artifact=artifact, origin=origin,
                           calibration=calibration, extras=extras)


def fast_uint8_ends(flatbuffer: bytes) -> bytes:
    """The int8 model with cheap uint8 ends, computing the same values (tested bit-identical):
    - an output QUANTIZE (int8 to the file's uint8) after a final resize moves in front of it (a resize keeps its
      input's scale): the work of 64x64x21 instead of 512x512x21 for LR-ASPP at 512x512;
    - a QUANTIZE between uint8 and int8 of one scale (the input's and the output's) goes through float32
      (DEQUANTIZE, then QUANTIZE: exact, as round(s * k / s) = k for every |k| <= 255), which XNNPACK runs where it
      left the shift to LiteRT's own kernel, single-threaded (LiteRT's profiler: 0.46 ms of LR-ASPP's 6.7 at 512x512,
      2 threads). Files with int8 ends (`Artifact.io_dtype`) have no such QUANTIZE: integer throughout."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]  # the converter writes one
    quantizes = [op for op in graph.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "QUANTIZE"]
    changed = [(_before_resize(model, graph, op), _through_float(model, graph, op)) for op in quantizes]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if any(map(any, changed)) else flatbuffer


def _before_resize(model, graph, quantize):
    """Moves an output `quantize` in front of the resize that alone reads its input; False where there is none."""
    output, resized = quantize.outputs[0], quantize.inputs[0]
    resize = next((op for op in graph.operators if resized in op.outputs), None)
    if output not in graph.outputs or resize is None or resized in graph.outputs or sum(
            list(op.inputs).count(resized) for op in graph.operators) != 1 or flatbuffer_utils.opcode_to_name(
            model, resize.opcodeIndex) not in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        return False
    # The tensor between the two ops becomes the requantized small one, in the output's type and scale.
    small, between, final = (graph.tensors[i] for i in (resize.inputs[0], resized, output))
    between.shape, between.shapeSignature = small.shape, small.shapeSignature
    between.type, between.quantization = final.type, final.quantization
    quantize.inputs, quantize.outputs = [resize.inputs[0]], [resized]
    resize.inputs, resize.outputs = [resized, *list(resize.inputs)[1:]], [output]
    graph.operators.remove(quantize)
    graph.operators.insert(graph.operators.index(resize), quantize)
    return True


def _through_float(model, graph, quantize):
    """Puts a DEQUANTIZE to float32 in front of a `quantize` that shifts uint8 to int8 or back; False where not one."""
    source, target = (graph.tensors[i] for i in (quantize.inputs[0], quantize.outputs[0]))
    if {source.type, target.type} != {tfl.TensorType.UINT8, tfl.TensorType.INT8} or list(  # a QUANTIZE's two
            source.quantization.scale) != list(target.quantization.scale):  # integer tensors always have scales
        return False
    graph.tensors.append(tfl.TensorT(name=source.name + b"/float", shape=source.shape, hasRank=source.hasRank,
                                     shapeSignature=source.shapeSignature, type=tfl.TensorType.FLOAT32, buffer=0))
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    if tfl.BuiltinOperator.DEQUANTIZE not in codes:
        codes.append(tfl.BuiltinOperator.DEQUANTIZE)
        model.operatorCodes.append(tfl.OperatorCodeT(builtinCode=codes[-1], deprecatedBuiltinCode=codes[-1]))
    index = codes.index(tfl.BuiltinOperator.DEQUANTIZE)
    model.operatorCodes[index].version = max(model.operatorCodes[index].version, 2)  # 2: reads int8 as well as uint8
    dequantize = tfl.OperatorT(opcodeIndex=index, inputs=[quantize.inputs[0]], outputs=[len(graph.tensors) - 1])
    quantize.inputs = [len(graph.tensors) - 1]
    graph.operators.insert(graph.operators.index(quantize), dequantize)
    return True


# Ops that keep a factor on their input as the same factor on their output when both scales take it (their int8
# kernels read only the ratio of the two scales, or need them equal), and have no fused activation to move.
_SCALE_CARRIERS = ("MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
                   "MUL")
_ABSORBERS = ("CONV_2D", "DEPTHWISE_CONV_2D")  # take a factor on their input into their weights' scales


def fold_constant_multiplies(flatbuffer: bytes) -> bytes:
    """The int8 model without the multiplies by a constant scalar whose product feeds another MUL: the same function
    with one int8 op, and one rounding, fewer each. For MobileNetV3's `(x / 6) * relu6(x + 3)` (hard-swish, see
    `kseg.models.custom_layers.HardSwish`) and `relu6(x + 3) / 6` (hard-sigmoid): without `x / 6` the next MUL's
    product is 6x, so its tensor's scale takes the 6 (its int8 values stay), as do the tensors derived from it by
    MEAN, pooling, resizing or MUL, up to the convolutions, whose weight scales take 1/6: every requantization
    multiplier stays. LR-ASPP MobileNetV3-Large, 512x512, 2 threads: 27 of 58 MULs gone, 11.7 -> 10.0 ms, logits
    nearer the float file's. A multiply whose downstream meets another op (ADD, a graph output) stays."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    name = {id(op): flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators}
    users: dict[int, list] = {}
    for op in graph.operators:
        for position, tensor in enumerate(op.inputs):
            users.setdefault(tensor, []).append((op, position))

    def carry(tensor, factor, scales):
        """Plans `tensor` (int8) holding `factor` x its value: {tensor: multiple of its scale}, into `scales`; False
        where some path from it cannot take the factor."""
        quantization = graph.tensors[tensor].quantization
        if tensor in graph.outputs or tensor in scales or quantization is None or not quantization.scale:
            return False
        scales[tensor] = factor
        for op, position in users.get(tensor, []):
            kind, activation = name[id(op)], getattr(op.builtinOptions, "fusedActivationFunction", 0)
            if kind in _ABSORBERS and position == 0 and len(users[op.inputs[1]]) == 1 and metadata.is_constant(
                    model, graph.tensors[op.inputs[1]]):
                scales[op.inputs[1]] = 1 / factor
            elif kind not in _SCALE_CARRIERS or activation or (position != 0 and kind != "MUL") or (
                    kind == "MUL" and op.inputs[0] == op.inputs[1]) or not carry(op.outputs[0], factor, scales):
                return False
        return True

    dropped = []
    for op in graph.operators:
        factor = _constant_scalar(model, graph, op) if name[id(op)] == "MUL" else None
        if not factor or factor < 0 or len(users.get(op.outputs[0], [])) != 1:
            continue
        (second, position), = users[op.outputs[0]]
        if name[id(second)] != "MUL" or getattr(second.builtinOptions, "fusedActivationFunction", 0):
            continue
        source = next(t for t in op.inputs
                      if graph.tensors[t].quantization and not metadata.is_constant(model, graph.tensors[t]))
        scales: dict[int, float] = {}
        if not carry(second.outputs[0], 1 / factor, scales):
            continue
        second.inputs = [source if index == position else tensor for index, tensor in enumerate(second.inputs)]
        for tensor, multiple in scales.items():
            quantization = graph.tensors[tensor].quantization
            quantization.scale = [value * multiple for value in quantization.scale]
        dropped.append(op)
    if not dropped:
        return flatbuffer
    graph.operators = [op for op in graph.operators if all(op is not gone for gone in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _constant_scalar(model, graph, op):
    """The real value of a MUL's constant one-element int8 input (None where it has none)."""
    for tensor in (graph.tensors[i] for i in op.inputs):
        quantization = tensor.quantization
        data = model.buffers[tensor.buffer].data
        if tensor.type == tfl.TensorType.INT8 and data is not None and len(data) == 1 and quantization is not None \
                and quantization.scale is not None and len(quantization.scale) == 1:
            value = int(np.asarray(data, np.uint8).view(np.int8)[0])
            return float(quantization.scale[0]) * (value - int(quantization.zeroPoint[0]))
    return None


def _with_metadata(flatbuffer, class_names, channels):
    """The file with TFLite metadata that MediaPipe's ImageSegmenter reads (`kseg.deploy.metadata`), and the
    sidecar's record of it: what was embedded, or why nothing was (label-map outputs). Class names that do
    not match the output channels (two names for a one-logit binary model) are left out, not guessed."""
    reason = metadata.unsupported(flatbuffer)
    if reason:
        return flatbuffer, {"skipped": reason}
    names = class_names if class_names and len(class_names) == channels else None
    flatbuffer = metadata.embed(flatbuffer, names)
    return flatbuffer, metadata.read(flatbuffer)


def _conversion_error(model, mode, error):
    ops = sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9]+)", str(error))))
    if ops:
        return ExportError(
            f"{model.name}: {mode} LiteRT export needs ops that are not LiteRT builtins: {', '.join(ops)}")
    first = next((line.strip() for line in str(error).splitlines() if "error" in line.lower()), first_line(error))
    return ExportError(f"{model.name}: {mode} LiteRT conversion failed: {first[:300]}")
