"""Conversion to ONNX: a Keras model to a float32 `.onnx` file for onnxruntime (or any ONNX runtime).

    info = kseg.deploy.onnx_export.to_onnx(model, "model.onnx", artifact=kseg.deploy.modes.Artifact((257, 257)))
    kseg.runtime.OnnxModel("model.onnx").labels(image)     # uint8 (H, W) class map

Keras 3 writes the file (`model.export(format="onnx")`, through tf2onnx under the TensorFlow backend);
kseg fixes the input to `[batch, height, width, 3]` float32 RGB pixels in [0, 255] (any batch: the
model normalises inside, as in every kseg artifact), names the output `logits` or `labels` (argmax
inside the graph, uint8), makes tf2onnx's resizes give exactly the sizes TensorFlow asked for
(`exact_resize_sizes`: without it odd input sizes give files onnxruntime refuses), names the ops tf2onnx
cannot convert, writes the file atomically and gives it the same JSON sidecar as a LiteRT artifact
(classes, input size, normalisation, output, ops, provenance). `kseg export --modes onnx` and
`kseg.deploy.stage` reach it through the `onnx` export mode.
"""

import contextlib
import logging
import os
import re
import tempfile
import warnings

import keras

from kseg.deploy import modes, sidecar
from kseg.errors import ExportError, KsegError, first_line
from kseg.runtime import OnnxModel

PACKAGES = ("onnx", "onnxruntime", "tf2onnx")


def require_packages():
    """A KsegError naming what to install when onnx, onnxruntime or tf2onnx is missing."""
    import importlib.util

    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise KsegError(f"ONNX export needs {', '.join(missing)}: pip install 'kseg[onnx]'")


class LabelMap(keras.layers.Layer):
    """uint8 labels from logits: the argmax over classes, or logit > 0 for a single channel.

    Under TensorFlow it is `tf.argmax` itself: `keras.ops.argmax` wraps it in a fix for -0.0 made of
    Bitcast and BitwiseAnd, which tf2onnx cannot convert (nor LiteRT run).
    """

    def call(self, logits):
        if logits.shape[-1] == 1:
            return keras.ops.cast(logits[..., 0] > 0, "uint8")
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.uint8)
        return keras.ops.cast(keras.ops.argmax(logits, axis=-1), "uint8")


def serving_model(model, input_size, output="logits"):
    """A Keras model around `model` with a fixed-size float32 input `image` (any batch) and one named output:
    float32 `logits`, or uint8 `labels` (`LabelMap`)."""
    if output not in modes.OUTPUTS:
        raise KsegError(f"output must be one of {modes.OUTPUTS}, got {output!r}")
    image = keras.Input((*input_size, 3), dtype="float32", name="image")
    logits = keras.ops.cast(model(image), "float32")
    if output == "labels":
        return keras.Model(image, {"labels": LabelMap(name="labels")(logits)}, name=model.name)
    return keras.Model(image, {"logits": logits}, name=model.name)


def to_onnx(model, path: str, *, artifact: modes.Artifact, origin: modes.Origin | None = None,
            opset: int | None = None) -> dict:
    """Writes a Keras model as a float32 ONNX file (atomically); returns its sidecar dict (also `<path>.json`).

    `origin`: classes, checkpoint and provenance (default: `Origin.of(model)`); `opset`: the ONNX opset
    (default: tf2onnx's). A TensorFlow op that tf2onnx cannot convert fails with an ExportError naming it
    (tf2onnx itself only logs it and writes a file that no runtime loads).
    """
    require_packages()
    wrapper = serving_model(model, artifact.input_size, artifact.output)
    signature = [keras.InputSpec(shape=(None, *artifact.input_size, 3), dtype="float32", name="image")]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".onnx")
    os.close(handle)
    try:
        with _quiet_tf2onnx() as errors:
            wrapper.export(tmp, format="onnx", verbose=False, input_signature=signature, opset_version=opset)
        unsupported = sorted({op for line in errors for op in re.findall(r"Tensorflow op \[.*?: (\w+)\]", line)})
        if unsupported:
            raise ExportError(f"{model.name}: ONNX export needs TensorFlow ops that tf2onnx cannot convert: "
                              f"{', '.join(unsupported)}")
        exact_resize_sizes(tmp)
        opset = OnnxModel(tmp).opset()  # onnxruntime checks the file before it takes the artifact's name
        return sidecar.publish(tmp, path, model=model, mode="onnx", artifact=artifact,
                               origin=origin if origin is not None else modes.Origin.of(model),
                               extras={"opset": opset})
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"{model.name}: ONNX export failed: {first_line(error)[:300]}") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def exact_resize_sizes(path):
    """Makes every `Resize` of the ONNX file at `path` give the size TensorFlow asked for (rewritten in place);
    returns how many scale constants changed.

    tf2onnx turns a bilinear resize of a static shape into `Resize` with float32 scales `new / old`, and ONNX
    sizes the output as floor(old * scale): 3 -> 10 (scale 3.3333333) comes out 9 wide, and onnxruntime
    refuses the file (a concatenation whose inputs disagree). kseg's decoders resize to each skip's exact
    size, so any input size whose strides do not divide it evenly (40x40 in DeepLabV3+) meets this. Moving
    each scale up by one float32 step puts old * scale just above `new`, so floor gives `new` again; the
    sampling positions move by about 1e-7 of the size, far below float32 noise elsewhere.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    names = {node.input[2] for node in model.graph.node
             if node.op_type == "Resize" and len(node.input) > 2 and node.input[2] in constants
             and not (len(node.input) > 3 and node.input[3])}  # not when sizes are given
    changed = 0
    for name in sorted(names):
        scales = numpy_helper.to_array(constants[name])
        if scales.dtype != np.float32 or not scales.size or np.all(scales == 1):
            continue
        nudged = np.where(scales == 1, scales, np.nextafter(scales, np.float32(np.inf))).astype(np.float32)
        constants[name].CopyFrom(numpy_helper.from_array(nudged, name))
        changed += 1
    if changed:
        onnx.save(model, path)
    return changed


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _quiet_tf2onnx():
    """Yields the messages of tf2onnx's errors, which it logs instead of raising (an unsupported op). It logs
    every step at INFO level and Keras's numpy-2 patch of it warns about `np.object`: neither is shown."""
    logger, collect = logging.getLogger("tf2onnx"), _Collect()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            yield collect.lines
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
        logger.propagate = propagate
