"""Deployment: from a trained Keras model to the files apps run.

`modes` is the table of export modes; `litert` converts to LiteRT (builtin ops only) and SavedModel,
`onnx_export` to ONNX; `metadata` writes the TFLite metadata MediaPipe reads; `litert_graph` reads a
LiteRT graph's ops; `quantizer` and `mixed_precision` drive ai-edge-quantizer (int4, measured mixed
precision); `compression` fine-tunes first (QAT, pruning); `stage` runs one export request end to end
(convert, score, time) and `study` compares every mode.
"""


def __getattr__(name):
    import kseg

    return kseg.submodule(__name__, name)
