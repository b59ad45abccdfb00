"""Running a trained model: a `.keras` checkpoint, a `.tflite` or an `.onnx` file, one image or a batch, to labels.

    runner = kseg.runtime.predictor("model_int8.tflite", num_threads=2)
    labels = runner.labels(images)            # uint8 (N, H, W) class maps for float32 RGB images in [0, 255]
    kseg.runtime.LiteRTModel("model_int8.tflite").logits(image)   # dequantized, at the image's size
    kseg.runtime.open_artifact("model.onnx").labels(image)       # OnnxModel: onnxruntime

LiteRT files run on `ai_edge_litert` (XNNPACK), ONNX files on onnxruntime (CPU); quantized inputs and
outputs are handled here, and any image size is accepted (resized to the file's input, the prediction
resized back).
"""

import os
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf

import kseg.models  # noqa: F401 - registers kseg's layers, which `.keras` files name
from kseg import console
from kseg.errors import KsegError, first_line


def load_keras(path: str) -> keras.Model:
    """A `.keras` checkpoint as a Keras model (not compiled); a KsegError for a missing, corrupt or unreadable
    file."""
    if not os.path.exists(path):
        raise KsegError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # a `.keras` file is a zip archive; Keras says "File not found" otherwise
        raise KsegError(f"{path}: not a Keras model file: it is corrupt or truncated (not a zip archive)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise KsegError(f"{path}: cannot load Keras model ({first_line(error)})") from error


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """uint8 labels from (..., C) logits: argmax, or logit > 0 for a single channel."""
    logits = np.asarray(logits)
    return (logits[..., 0] > 0 if logits.shape[-1] == 1 else logits.argmax(-1)).astype(np.uint8)


class ArtifactModel:
    """What `LiteRTModel` and `OnnxModel` share: a file with a fixed input size, run one image at a time.

    A subclass opens the file and sets `path`, `input` and `output` (dicts: index or name, shape, dtype,
    quantization), and implements `set_input` (an array of the input's dtype and shape), `invoke` and
    `get_output`; `run`, `logits` and `labels` are built on them, and `kseg.runtime.bench` times each step.
    """

    path: str
    input: dict
    output: dict

    def set_input(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def invoke(self) -> None:
        raise NotImplementedError

    def get_output(self) -> np.ndarray:
        raise NotImplementedError

    def ops(self) -> list[str]:
        raise NotImplementedError

    def _describe(self):
        self.input_size = tuple(int(s) for s in self.input["shape"][1:3])
        self.output_kind = "labels" if len(self.output["shape"]) == 3 else "logits"

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One float32 image (H, W, 3) in [0, 255] at the input size as the input array: batch of one,
        quantized to the input's type where it is an integer type."""
        quant = self.input["quantization"]
        if self.input["dtype"] == np.float32:
            return np.asarray(image, np.float32)[None]
        info = np.iinfo(self.input["dtype"])
        x = np.array(image, np.float32)[None]  # one copy, then in place: temporaries cost more than the math
        if quant["scale"] != 1:
            x /= quant["scale"]
        if quant["zero_point"]:
            x += quant["zero_point"]
        np.round(x, out=x)
        np.clip(x, info.min, info.max, out=x)
        return x.astype(self.input["dtype"])

    def finish(self, y: np.ndarray) -> np.ndarray:
        """The output array of one image, dequantized where it is quantized logits."""
        quant = self.output["quantization"]
        if self.output_kind == "logits" and quant:
            y = y.astype(np.float32)  # one copy, then in place: 4.6x faster than (y - zero_point) * scale at 512x512x21
            y -= quant["zero_point"]
            y *= quant["scale"]
        return y

    def run(self, image: np.ndarray) -> np.ndarray:
        """Raw output for one float32 image (H, W, 3) in [0, 255] already at the input size; dequantized."""
        self.set_input(self.prepare(image))
        self.invoke()
        return self.finish(self.get_output()[0])

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Dequantized logits for one image of any size, resized back to that size."""
        if self.output_kind != "logits":
            raise KsegError(f"{self.path} outputs labels, not logits")
        image = np.asarray(image, np.float32)
        logits = self.run(_resize(image, self.input_size))
        return _resize(logits, image.shape[:2])

    def labels(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) class map for one float32 RGB image (H, W, 3) in [0, 255] of any size."""
        image = np.asarray(image, np.float32)
        output = self.run(_resize(image, self.input_size))
        if self.output_kind == "logits":
            return _labels_at(output, tf.constant(image.shape[:2])).numpy()
        labels = output.astype(np.uint8)
        if labels.shape != image.shape[:2]:
            labels = tf.image.resize(labels[..., None], image.shape[:2], method="nearest").numpy()[..., 0]
        return labels


class LiteRTModel(ArtifactModel):
    """A .tflite file ready to run: `LiteRTModel(path, num_threads=2).labels(image)`.

    Handles quantized inputs and outputs, and any image size (resized to the model's input, the
    prediction resized back with nearest neighbour).
    """

    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if not os.path.exists(path):
            raise KsegError(f"{path}: no such file")
        try:
            with console.quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise KsegError(f"{path}: not a usable LiteRT model ({first_line(error)})") from error
        self.path = path
        self.input = _tensor_details(self.interpreter.get_input_details()[0])
        self.output = _tensor_details(self.interpreter.get_output_details()[0])
        self._describe()

    def ops(self) -> list[str]:
        """Sorted names of the builtin ops in the graph (e.g. CONV_2D, RESIZE_BILINEAR), before delegation."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        plain = Interpreter(
            model_path=self.path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        return sorted({op["op_name"] for op in plain._get_ops_details()})

    def set_input(self, x: np.ndarray) -> None:
        self.interpreter.set_tensor(self.input["index"], x)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_output(self) -> np.ndarray:
        """A copy of the output tensor (batch of one)."""
        return self.interpreter.get_tensor(self.output["index"])


class OnnxModel(ArtifactModel):
    """An .onnx file on onnxruntime (CPU), with the interface of `LiteRTModel`:
    `OnnxModel(path, num_threads=2).labels(image)`.

    The input is float32 pixels; `set_input` binds the array as the input (an IO binding: onnxruntime
    wraps a CPU array without copying it), `invoke` runs the graph and `get_output` copies the output
    out, so each step can be timed. `profile=True` makes onnxruntime record every node's time
    (`kseg.runtime.bench` reads it).
    """

    def __init__(self, path: str, num_threads: int | None = None, profile: bool = False):
        try:
            import onnxruntime
        except ImportError:
            raise KsegError(f"{path}: running ONNX files needs onnxruntime: pip install 'kseg[onnx]'") from None
        if not os.path.exists(path):
            raise KsegError(f"{path}: no such file")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="kseg-onnx-profile-"), "profile")
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise KsegError(f"{path}: not a usable ONNX model ({first_line(error)})") from error
        self.path = path
        self.input = _onnx_details(self.session.get_inputs()[0])
        self.output = _onnx_details(self.session.get_outputs()[0])
        if self.input["dtype"] != np.float32:
            raise KsegError(f"{path}: expected a float32 image input, got {self.input['dtype'].__name__}")
        self._describe()
        self._binding = self.session.io_binding()
        self._binding.bind_output(self.output["name"], "cpu")
        self._value = None

    def ops(self) -> list[str]:
        """Sorted op types of the graph's nodes (e.g. Conv, Resize), as the file declares them."""
        import onnx

        return sorted({node.op_type for node in onnx.load(self.path, load_external_data=False).graph.node})

    def opset(self) -> int | None:
        """The file's default-domain ONNX opset version."""
        import onnx

        model = onnx.load(self.path, load_external_data=False)
        return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def set_input(self, x: np.ndarray) -> None:
        import onnxruntime

        self._value = onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x))
        self._binding.bind_ortvalue_input(self.input["name"], self._value)

    def invoke(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def get_output(self) -> np.ndarray:
        """A copy of the output (batch of one)."""
        return self._binding.copy_outputs_to_cpu()[0]

    def end_profiling(self) -> str:
        """The path of onnxruntime's profile (a Chrome trace JSON), when made with `profile=True`."""
        return self.session.end_profiling()


def _tensor_details(details):
    scale, zero_point = details["quantization"]
    return {
        "index": details["index"],
        "shape": details["shape"],
        "dtype": details["dtype"],
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


def _onnx_details(arg):
    """An onnxruntime input or output description in `_tensor_details`' form (a name where LiteRT has an index;
    a dynamic dimension, such as the batch, as 1)."""
    dtypes = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    if arg.type not in dtypes:
        raise KsegError(f"unsupported ONNX tensor type {arg.type} ({arg.name})")
    shape = np.array([d if isinstance(d, int) else 1 for d in arg.shape], np.int32)
    return {"name": arg.name, "shape": shape, "dtype": dtypes[arg.type], "quantization": None}


def _resize(array, size):
    return array if array.shape[:2] == tuple(size) else tf.image.resize(array, size).numpy()


@tf.function(reduce_retracing=True)
def _labels_at(logits, size):
    """Bilinear resize of (h, w, C) logits to `size`, then argmax (or > 0 for one channel), as uint8:
    one graph call per image instead of separate eager ops (2.6x faster evaluation)."""
    logits = tf.image.resize(logits, size)
    if logits.shape[-1] == 1:
        return tf.cast(logits[..., 0] > 0, tf.uint8)
    return tf.cast(tf.argmax(logits, axis=-1), tf.uint8)


ARTIFACTS = {".tflite": LiteRTModel, ".onnx": OnnxModel}  # file extension -> what runs it


def open_artifact(path: str, num_threads: int | None = None) -> ArtifactModel:
    """A `LiteRTModel` for a `.tflite` path, an `OnnxModel` for an `.onnx` path."""
    runner = ARTIFACTS.get(os.path.splitext(path)[1].lower())
    if runner is None:
        raise KsegError(f"{path}: expected a {' or '.join(ARTIFACTS)} file")
    return runner(path, num_threads=num_threads)
