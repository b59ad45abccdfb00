"""Will a float LiteRT file run on a phone's GPU? TensorFlow's static check and a stricter one of kseg's, both.

    report = kseg.deploy.gpu.check(open("model_float32.tflite", "rb").read())
    report["compatible"]             # True only when both checks pass
    report["problems"]               # [{"op": "ARG_MAX", "reason": "not on the GPU delegate's list", ...}]
    kseg.deploy.gpu.verdict(report)  # "GPU delegate: compatible (TensorFlow's analyzer and kseg's check agree)"

TensorFlow's `tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)` passes too much in TF 2.21: CUMSUM,
TOPK_V2, an int32 FLOOR_MOD and a 6-D TRANSPOSE were all called compatible (seen). kseg's check holds every op to
the delegate's list (`GPU_OPS`), every tensor to 4 dimensions, every activation to a float type, and the options
the delegate refuses or kseg does not want (GATHER, align_corners bilinear resizes...) to what runs. `kseg export`
records the report in each float32 and float16 file's sidecar (`"gpu"`) and prints its verdict.
"""

import collections
import contextlib
import io
import os
import sys
import tempfile

from kseg import console

# What TFLite's GPU delegate runs: the ops `CheckGpuDelegateCompatibility` accepts in
# tensorflow/lite/tools/versioning/gpu_compatibility.cc (its checks "used to be in TFLiteOperationParser::IsSupported()
# of tensorflow/lite/delegates/gpu/common/model_builder.cc", whose NewOperationParser parses the same ops), with the
# option rules of that file that kseg's models can meet. Not listed on purpose: ARG_MAX, TOPK_V2 (absent there) and
# GATHER (kseg's rule: a gather is an index-built graph; the delegate takes 1-D float gathers only).
# Tensor rules from model_builder.cc's IsAllAllowedTensors: no tensor of 5 dimensions or more, and activations
# (non-constant tensors) float32 or float16 (bool out of a comparison, bool into CAST).
GPU_OPS = {
    "ABS", "ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D", "COS", "CUMSUM",
    "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EQUAL", "EXP", "FLOOR",
    "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GELU", "GREATER", "GREATER_EQUAL", "HARD_SWISH", "LEAKY_RELU",
    "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM",
    "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD", "PADV2", "POW", "PRELU", "REDUCE_MAX",
    "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2", "SIGN", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "STRIDED_SLICE", "SUB", "SUM",
    "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV",
}
COMPARISONS = {"EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "LOGICAL_AND", "NOT_EQUAL"}  # bool out
MAX_RANK = 4
ANALYZER = "tf.lite.experimental.Analyzer"
KSEG = "kseg.deploy.gpu.strict"


def check(flatbuffer: bytes) -> dict:
    """Both checks of one LiteRT file (bytes): {"compatible", "analyzer": {...}, "kseg": {...}, "problems"}.

    Each check is {"tool", "compatible", "problems": [{"op", "reason", "count"}]}; the top-level problems are both
    checks' together (each with its "tool"). Compatible only when both say so.
    """
    checks = {"analyzer": analyzer(flatbuffer), "kseg": strict(flatbuffer)}
    problems = [{**problem, "tool": report["tool"]} for report in checks.values() for problem in report["problems"]]
    return {"compatible": all(report["compatible"] for report in checks.values()), **checks, "problems": problems}


def verdict(report: dict) -> str:
    """One line for the console: the verdict, and what is in the way (at most four problems)."""
    if report["compatible"]:
        return "GPU delegate: compatible (TensorFlow's analyzer and kseg's check agree)"
    names = [f"{p['op']} ({p['reason']})" for p in report["problems"]]
    more = f", {len(names) - 4} more" if len(names) > 4 else ""
    who = ("both checks" if not report["analyzer"]["compatible"] and not report["kseg"]["compatible"]
           else "kseg's check; TensorFlow's analyzer passes it" if report["analyzer"]["compatible"]
           else "TensorFlow's analyzer; kseg's check passes it")
    return f"GPU delegate: NOT compatible ({who}): {', '.join(names[:4])}{more} (sidecar: \"gpu\")"


def analyzer(flatbuffer: bytes) -> dict:
    """TensorFlow's static GPU check; it prints its report (through Python, or to fd 1 from C++ in other versions),
    so both are caught and read back."""
    import tensorflow as tf

    printed = io.StringIO()
    with tempfile.TemporaryFile("w+") as out, console.quiet(), contextlib.redirect_stdout(printed):
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(out.fileno(), 1)
            tf.lite.experimental.Analyzer.analyze(model_content=bytes(flatbuffer), gpu_compatibility=True)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = printed.getvalue() + out.read()
    problems: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in text.splitlines():
        if "GPU COMPATIBILITY WARNING" in line:
            reason = line.split("WARNING:", 1)[-1].strip()
            op = next((word for word in reason.replace(":", " ").split() if word.isupper() and len(word) > 2), "?")
            problems[(op, reason)] += 1
    compatible = not problems and "looks compatible with GPU delegate" in text
    if not problems and not compatible:
        problems[("?", "the analyzer printed no verdict")] += 1
    return {"tool": f"{ANALYZER} (TensorFlow {tf.__version__})", "compatible": compatible,
            "problems": [{"op": op, "reason": reason, "count": n} for (op, reason), n in problems.items()]}


def strict(flatbuffer: bytes) -> dict:
    """kseg's check: the ops on `GPU_OPS` with the options the delegate takes, tensors of 4 dimensions at most,
    float activations."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    op_names = {code: name for name, code in vars(tfl.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {code: name for name, code in vars(tfl.TensorType).items() if not name.startswith("_")}
    problems: collections.Counter[tuple[str, str]] = collections.Counter()
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors
        constants = {index for index, tensor in enumerate(tensors) if model.buffers[tensor.buffer].data is not None}

        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            for reason in _op_problems(name, op, tensors=tensors, constant=constants.__contains__,
                                       type_names=type_names):
                problems[(name, reason)] += 1
    return {"tool": KSEG, "compatible": not problems,
            "problems": [{"op": op, "reason": reason, "count": n} for (op, reason), n in problems.items()]}


def _op_problems(name, op, *, tensors, constant, type_names):
    """Why the delegate would leave this op to the CPU (empty when it would not)."""
    if name not in GPU_OPS:
        return ["not on the GPU delegate's list"]
    inputs = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
    outputs = list(op.outputs if op.outputs is not None else [])
    reasons = []
    rank = max((len(tensors[i].shape) for i in inputs + outputs if tensors[i].shape is not None), default=0)
    if rank > MAX_RANK:
        reasons.append(f"{rank}-D tensor (the delegate takes {MAX_RANK}-D at most)")
    floats = {"FLOAT32", "FLOAT16"}
    for i in inputs + outputs:
        kind = type_names.get(tensors[i].type, "?")
        if (i in inputs and constant(i)) or kind in floats:
            continue
        if kind == "BOOL" and ((i in outputs and name in COMPARISONS) or (i in inputs and name in ("CAST", "SELECT",
                                                                                                  "SELECT_V2"))):
            continue
        reasons.append(f"{kind.lower()} activation (the delegate computes in float)")
        break
    options = op.builtinOptions
    if name == "RESIZE_BILINEAR" and options is not None:
        if options.alignCorners:
            reasons.append("align_corners=True")
        elif not options.halfPixelCenters:
            reasons.append("half_pixel_centers=False (not PyTorch's align_corners=False)")
    if name == "MIRROR_PAD" and options is not None and options.mode != 0:  # 0: REFLECT
        reasons.append("SYMMETRIC mirror padding (the delegate reflects only)")
    if name in ("STRIDED_SLICE", "SLICE") and len(tensors[inputs[0]].shape) not in (3, 4):
        reasons.append("slices 3-D or 4-D tensors only")
    if name == "STRIDED_SLICE" and options is not None and (
            options.ellipsisMask or options.newAxisMask or options.shrinkAxisMask):
        reasons.append("ellipsis, new-axis or shrink-axis mask")
    if name == "SOFTMAX" and options is not None and options.beta != 1:
        reasons.append("softmax beta != 1")
    if name == "DEQUANTIZE" and not (constant(inputs[0]) and type_names.get(tensors[inputs[0]].type) == "FLOAT16"):
        reasons.append("dequantizes an activation (float16 weights only)")
    if name == "DEPTHWISE_CONV_2D" and options is not None and options.depthMultiplier != 1 and \
            tensors[inputs[0]].shape[-1] != 1:
        reasons.append("depth multiplier > 1")
    return reasons
