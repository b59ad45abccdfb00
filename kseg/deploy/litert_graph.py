"""A LiteRT model's graph as ai-edge-quantizer (AEQ) sees it: its ops by the tensor names that recipes match, the
Keras layers behind them, what stays in float, and the rewrites AEQ needs (a serving signature) or leaves
(weights appended after the flatbuffer).

    graph = kseg.deploy.litert_graph.ops(flatbuffer)      # Op(index, name="CONV_2D", scope, inputs, outputs, ...)
    graph[0].describe(model)                               # {"op", "tensor", "layer"}
    kseg.deploy.litert_graph.weight_types(quantized)              # {"int4": 13, "int8": 2}
    kseg.deploy.litert_graph.Denylist.of(settings, graph).covered # the ops --float-ops / --float-layers name
"""

import contextlib
import dataclasses
import re
import warnings

import flatbuffers
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.tools import flatbuffer_utils
from ai_edge_quantizer.utils import tfl_interpreter_utils

from kseg.deploy.metadata import AlignedBuffer, is_constant
from kseg.errors import KsegError

SIGNATURE = "serving_default"  # AEQ runs a model through a signature; kseg's converter writes none
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
                "layer": layer_of(";".join((self.scope, *self.constants)), model)}


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
            constant is None or is_constant(model, graph.tensors[i]) == constant))

    found = []
    for index, op in enumerate(graph.operators):
        outputs = names(op.outputs)
        scope = ";".join(outputs) + ";" if outputs else ";".join(names(op.inputs)) + ";"
        found.append(Op(index=index, name=flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), scope=scope,
                        inputs=names(op.inputs, constant=False), outputs=outputs,
                        constants=names(op.inputs, constant=True)))
    return found


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


def inline_buffers(flatbuffer):
    """The model with every buffer inside the flatbuffer, 16-byte aligned. AEQ appends the weights of models
    over 256 KB after the flatbuffer (offset and size, the format of models over 2 GB), which LiteRT runs
    but TFLite's metadata tools (`kseg.deploy.metadata`) do not take."""
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


@contextlib.contextmanager
def no_debug_warning():
    """Keeps every tensor (calibration, sensitivity) without LiteRT's warning that it is for debugging: it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        yield


def quantized_tensors(flatbuffer):
    """Names of the tensors the model holds as int8 or int16 activations."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    return {t.name.decode() for t in graph.tensors
            if t.type in (tfl.TensorType.INT8, tfl.TensorType.INT16, tfl.TensorType.UINT8)
            and not is_constant(model, t)}


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
            if not is_constant(model, tensor):  # a DEQUANTIZE feeds float filters: count its source
                producer = next((p for p in graph.operators if index in p.outputs), None)
                if producer is None or not producer.inputs:
                    continue
                tensor = graph.tensors[producer.inputs[0]]
            kind = _WEIGHT_TYPES.get(tensor.type, str(tensor.type))
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def layer_of(scope, model=None):
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

