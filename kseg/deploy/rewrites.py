"""Rewrites of converted int8 LiteRT graphs that LiteRT's CPU runtime (XNNPACK) runs faster, each computing the same
function (bit for bit, or within a quantization step): `kseg.deploy.litert.write_litert` applies `int8` to every
file with integer activations it publishes.

    flatbuffer = kseg.deploy.rewrites.int8(converter.convert())

XNNPACK leaves some int8 ops to LiteRT's own kernels, single-threaded and slow (a uint8-int8 QUANTIZE, a standalone
RELU), and each op costs a dispatch: `fast_uint8_ends`, `relu_as_fused_add` and `fold_constant_multiplies` turn them
into ops it runs, or into none. LiteRT's profiler (`kseg.runtime.profiler`) shows where a file's time goes.
"""

import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.tools import flatbuffer_utils

from kseg.deploy import metadata


def int8(flatbuffer: bytes) -> bytes:
    """Every rewrite of this module, in order (a graph none applies to comes back as it was)."""
    return fold_constant_multiplies(affine_as_depthwise(relu_as_fused_add(fast_uint8_ends(flatbuffer))))


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
    dequantize = tfl.OperatorT(opcodeIndex=_opcode(model, tfl.BuiltinOperator.DEQUANTIZE, version=2),  # int8 too
                               inputs=[quantize.inputs[0]], outputs=[len(graph.tensors) - 1])
    quantize.inputs = [len(graph.tensors) - 1]
    graph.operators.insert(graph.operators.index(quantize), dequantize)
    return True


_FUSABLE = {"RELU": tfl.ActivationFunctionType.RELU, "RELU6": tfl.ActivationFunctionType.RELU6,
            "RELU_N1_TO_1": tfl.ActivationFunctionType.RELU_N1_TO_1}


def relu_as_fused_add(flatbuffer: bytes) -> bytes:
    """The int8 model with each standalone ReLU (the converter leaves one where the tensor it rectifies has other
    readers: DDRNet's residual sums) as an ADD of zero with that ReLU fused, the same function (its own rounding:
    outputs within a quantization step, tested), which XNNPACK runs where it left int8 RELU to LiteRT's reference
    kernel (DDRNet-23-slim at 512x512: 4 RELUs, 3.9 of 12.5 ms in LiteRT's profiler)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    relus = [op for op in graph.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) in _FUSABLE
             and graph.tensors[op.inputs[0]].type == tfl.TensorType.INT8]
    for op in relus:
        source = graph.tensors[op.inputs[0]]
        zero = int(source.quantization.zeroPoint[0])  # a real 0 in the source's scale
        constant = _add_constant(model, graph, source.name + b"/zero", np.array(zero, np.int8),
                                 scale=[float(source.quantization.scale[0])], zero_point=[zero])
        activation = _FUSABLE[flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)]
        op.opcodeIndex = _opcode(model, tfl.BuiltinOperator.ADD, version=2)  # 2: int8
        op.inputs = [op.inputs[0], constant]
        op.builtinOptionsType = tfl.BuiltinOptions.AddOptions
        op.builtinOptions = tfl.AddOptionsT(fusedActivationFunction=activation)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if relus else flatbuffer


def affine_as_depthwise(flatbuffer: bytes) -> bytes:
    """The int8 model with each per-channel affine map, a MUL by a constant vector whose product only an ADD of a
    constant vector reads (the input normalisation (x - mean) / std of torchvision-style backbones), as one 1x1
    DEPTHWISE_CONV_2D: the same function with one rounding where there were two, its factors exact in the weights'
    per-channel scales. XNNPACK runs two broadcasting binary ops over the whole 3-channel image slowly (DDRNet-23-slim
    at 512x512: the MUL alone 0.47 ms in LiteRT's profiler)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    name = {id(op): flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators}
    users = _users(graph)
    dropped = []
    for mul in [op for op in graph.operators if name[id(op)] == "MUL"]:
        source, scale = _constant_operand(model, graph, mul)
        readers = users.get(mul.outputs[0], [])
        if scale is None or scale.ndim != 1 or len(readers) != 1 or name[id(readers[0][0])] != "ADD" or getattr(
                mul.builtinOptions, "fusedActivationFunction", 0) or mul.outputs[0] in graph.outputs:
            continue
        add = readers[0][0]
        _, shift = _constant_operand(model, graph, add)
        x = graph.tensors[source]
        if shift is None or shift.shape != scale.shape or len(x.shape) != 4 or x.shape[-1] != len(scale) or len(
                x.quantization.scale) != 1:  # a DEPTHWISE_CONV_2D takes images (4-D) and per-tensor activations
            continue
        weight_scales = np.where(scale != 0, np.abs(scale) / 127, 1.0).astype(np.float32)
        bias_scales = (weight_scales * float(x.quantization.scale[0])).astype(np.float32)
        weights = np.sign(scale).astype(np.int8) * 127
        bias = np.round(shift / bias_scales).astype(np.int32)
        output = graph.tensors[add.outputs[0]].name
        inputs = [source] + [_add_constant(model, graph, output + suffix, values, scale=list(scales),
                                           zero_point=[0] * len(scales), axis=values.ndim - 1)
                             for suffix, values, scales in ((b"/weights", weights.reshape(1, 1, 1, -1), weight_scales),
                                                            (b"/bias", bias, bias_scales))]
        add.opcodeIndex, add.inputs = _opcode(model, tfl.BuiltinOperator.DEPTHWISE_CONV_2D, version=3), inputs
        activation = getattr(add.builtinOptions, "fusedActivationFunction", 0)
        add.builtinOptionsType = tfl.BuiltinOptions.DepthwiseConv2DOptions
        add.builtinOptions = tfl.DepthwiseConv2DOptionsT(padding=tfl.Padding.VALID, strideW=1, strideH=1,
                                                         depthMultiplier=1, fusedActivationFunction=activation)
        dropped.append(mul)
    return _without(model, graph, dropped, flatbuffer)


def _users(graph):
    """{tensor: [(op, input position)]} of a graph."""
    users: dict[int, list] = {}
    for op in graph.operators:
        for position, tensor in enumerate(op.inputs):
            users.setdefault(tensor, []).append((op, position))
    return users


def _without(model, graph, dropped, flatbuffer):
    """The model without the `dropped` ops, serialised; `flatbuffer` as it was where none are dropped."""
    if not dropped:
        return flatbuffer
    graph.operators = [op for op in graph.operators if all(op is not gone for gone in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _constant_operand(model, graph, op):
    """(the other input, the real values, in the tensor's shape) of a binary op's constant int8 input quantized
    per tensor; (None, None) where it has none."""
    for position, index in enumerate(op.inputs[:2]):
        tensor, quantization = graph.tensors[index], graph.tensors[index].quantization
        if tensor.type == tfl.TensorType.INT8 and metadata.is_constant(model, tensor) and quantization is not None \
                and quantization.scale is not None and len(quantization.scale) == 1:
            values = np.asarray(model.buffers[tensor.buffer].data, np.uint8).view(np.int8).astype(np.float64)
            real = float(quantization.scale[0]) * (values - int(quantization.zeroPoint[0]))
            return op.inputs[1 - position], real.reshape(tensor.shape)
    return None, None


def _add_constant(model, graph, name, values, scale, zero_point, axis=0):
    """Appends `values` (a numpy array) as a constant tensor quantized with `scale` and `zero_point` (per channel
    along `axis` where several) and returns its index."""
    model.buffers.append(tfl.BufferT(data=np.ascontiguousarray(values).reshape(-1).view(np.uint8)))
    kind = {np.dtype(np.int8): tfl.TensorType.INT8, np.dtype(np.int32): tfl.TensorType.INT32}[values.dtype]
    graph.tensors.append(tfl.TensorT(name=name, type=kind, shape=np.array(values.shape, np.int32),
                                     buffer=len(model.buffers) - 1, quantization=tfl.QuantizationParametersT(
                                         scale=scale, zeroPoint=zero_point, quantizedDimension=axis)))
    return len(graph.tensors) - 1


def _opcode(model, builtin, version):
    """The index of `builtin` in the model's operator codes (added where missing), at `version` or above."""
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    if builtin not in codes:
        codes.append(builtin)
        model.operatorCodes.append(tfl.OperatorCodeT(builtinCode=builtin, deprecatedBuiltinCode=min(builtin, 127)))
    model.operatorCodes[codes.index(builtin)].version = max(model.operatorCodes[codes.index(builtin)].version, version)
    return codes.index(builtin)


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
    users = _users(graph)

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
        _, values = _constant_operand(model, graph, op) if name[id(op)] == "MUL" else (None, None)
        factor = float(values.reshape(-1)[0]) if values is not None and values.size == 1 else None
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
    return _without(model, graph, dropped, flatbuffer)
