"""Conversion: a Keras model to a builtins-only LiteRT file (post-training modes) or a SavedModel.

    kseg.deploy.litert.to_litert(model, "model_int8.tflite", mode="int8", input_size=(257, 257),
                          calibration=train_split)

LiteRT files use builtin ops only (what phones and microcontrollers run); a model that would need
TensorFlow (Flex) ops fails with an ExportError naming them. Full-int8 models take uint8 RGB pixels
(scale 1, zero point 0: feed the camera's bytes as they are) and return uint8. Every artifact gets
a JSON sidecar (`<file>.json`) that says classes, input size, normalisation, output, quantization
and provenance. Logit files also carry TFLite Model Metadata (`kseg.deploy.metadata`: RGB input in [0, 255],
class names, softmax), so MediaPipe's ImageSegmenter runs them as they are. The modes that fine-tune
first (QAT, pruning) are `kseg.deploy.stage`'s; running a file is `kseg.runtime`'s.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from kseg import console, files, provenance
from kseg.deploy import metadata, modes
from kseg.errors import ExportError, KsegError, first_line
from kseg.runtime import LiteRTModel

CALIBRATION_IMAGES = modes.ExportSettings.num_calibration


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


def litert_converter(model, mode="float32", input_size=(257, 257), calibration=None, output="logits",
                     num_calibration=CALIBRATION_IMAGES, io_dtype="uint8"):
    """A `tf.lite.TFLiteConverter` set up for a post-training `mode` with builtin ops only (what `to_litert` runs)."""
    if modes.get(mode).format != "litert":
        raise KsegError(f"export mode {mode!r} does not write LiteRT: export it with kseg.deploy.stage.convert")
    if modes.get(mode).fine_tune:
        raise KsegError(f"export mode {mode!r} fine-tunes the model first: export it with kseg.deploy.stage.convert")
    if modes.get(mode).converter != "tflite":
        raise KsegError(f"export mode {mode!r} is ai-edge-quantizer's: export it with kseg.deploy.stage.convert "
                        "(or kseg.deploy.quantizer.to_litert)")
    if output not in modes.OUTPUTS:
        raise KsegError(f"output must be one of {modes.OUTPUTS}, got {output!r}")
    if io_dtype not in modes.IO_DTYPES:
        raise KsegError(f"io_dtype must be one of {modes.IO_DTYPES}, got {io_dtype!r}")
    input_size = tuple(int(s) for s in input_size)
    serve = _serving_function(model, input_size, output).get_concrete_function()
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
    if modes.MODES[mode].calibrates:
        if calibration is None:
            raise KsegError(f"{mode} export needs calibration images (a data split)")
        images = calibration if isinstance(calibration, list) else calibration_images(
            calibration, input_size, num_calibration)
        converter.representative_dataset = lambda: ([image] for image in images)
        if mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.as_dtype(io_dtype)
            if output == "logits":
                converter.inference_output_type = tf.as_dtype(io_dtype)
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
    return converter


def to_litert(model, path, mode="float32", input_size=(257, 257), calibration=None, output="logits",
              num_calibration=CALIBRATION_IMAGES, class_names=None, source=None, io_dtype="uint8", origin=None):
    """Converts a Keras model to a builtins-only LiteRT file (written atomically); returns the sidecar dict.

    `calibration`: a `kseg.data.Split` or a list of float32 (1, H, W, 3) arrays, needed by "int8"
    and "int16x8". `io_dtype`: the int8 model's input and output type, "uint8" (raw pixels: scale 1,
    zero point 0) or "int8" (pixels - 128: scale 1, zero point -128). `source`: the checkpoint the
    model came from; `origin`: its provenance (default: `kseg.provenance.of_checkpoint(source, model)`).
    """
    flatbuffer = litert_flatbuffer(model, mode, input_size, calibration, output, num_calibration, io_dtype)
    return write_litert(flatbuffer, path, model, mode, input_size, calibration, output, num_calibration,
                        class_names, source, origin)


def litert_flatbuffer(model, mode="float32", input_size=(257, 257), calibration=None, output="logits",
                      num_calibration=CALIBRATION_IMAGES, io_dtype="uint8"):
    """The converted LiteRT model (bytes, no metadata yet) of a post-training `mode`; a conversion that fails
    is an ExportError naming the ops LiteRT lacks."""
    converter = litert_converter(model, mode, input_size, calibration, output, num_calibration, io_dtype)
    try:
        with console.quiet():  # the converter prints its settings to fd 2; errors come back as exceptions
            return converter.convert()
    except Exception as error:  # ConverterError carries MLIR diagnostics: keep the op names only
        raise _conversion_error(model, mode, error) from error


def write_litert(flatbuffer, path, model, mode, input_size, calibration=None, output="logits",
                 num_calibration=CALIBRATION_IMAGES, class_names=None, source=None, origin=None, extra=None):
    """Writes a converted model as every kseg LiteRT file is written: metadata embedded, written atomically,
    with its sidecar (plus the `extra` entries); returns the sidecar dict."""
    origin = origin if origin is not None else provenance.of_checkpoint(source, model)
    flatbuffer, embedded = _with_metadata(flatbuffer, class_names or origin.get("class_names"),
                                          int(model.output_shape[-1]))
    files.write_atomic(path, flatbuffer)

    input_size = tuple(int(s) for s in input_size)
    runner = LiteRTModel(path)
    info = {
        "format": "litert",
        "mode": mode,
        "model": model.name,
        "source": source,
        "num_classes": int(model.output_shape[-1]),
        "class_names": list(class_names) if class_names else None,
        "input": {
            "shape": [1, *input_size, 3],
            "dtype": runner.input["dtype"].__name__,
            "quantization": runner.input["quantization"],
            "normalisation": "RGB pixels in [0, 255]; the model normalises inside",
        },
        "output": {
            "kind": output,
            "shape": runner.output["shape"].tolist(),
            "dtype": runner.output["dtype"].__name__,
            "quantization": runner.output["quantization"],
        },
        "ops": runner.ops(),
        "size_bytes": os.path.getsize(path),
        "calibration": _calibration_record(mode, calibration, num_calibration),
        "metadata": embedded,
        "provenance": origin,
        "kseg_version": provenance.version(),
        **(extra or {}),
    }
    write_sidecar(path, info)
    return info


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


def write_sidecar(path, info):
    """`info` as the artifact's JSON sidecar, `<path>.json`."""
    files.write_json(path + ".json", info)


def _calibration_record(mode, calibration, num_calibration):
    if not modes.MODES[mode].calibrates or calibration is None:
        return None
    if isinstance(calibration, list):
        return {"images": len(calibration), "data": "given arrays"}
    return {"images": min(num_calibration, calibration.length or num_calibration),
            "data": calibration.description}


def _conversion_error(model, mode, error):
    text = str(error)
    ops = sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9]+)", text)))
    if ops:
        return ExportError(
            f"{model.name}: {mode} LiteRT export needs ops that are not LiteRT builtins: {', '.join(ops)}"
        )
    first = next((line.strip() for line in text.splitlines() if "error" in line.lower()), first_line(error))
    return ExportError(f"{model.name}: {mode} LiteRT conversion failed: {first[:300]}")


def save_savedmodel(model, path, input_size=None):
    """A SavedModel with a `serve` endpoint (inference mode: batch norm uses its moving statistics).

    Written to a temporary folder and renamed, so an interrupted export leaves nothing half-written.
    """
    height, width = input_size or (None, None)
    from keras.export import ExportArchive

    export_archive = ExportArchive()
    export_archive.track(model)
    export_archive.add_endpoint(
        "serve",
        lambda image: model(image, training=False),
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="image")],
    )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        export_archive.write_out(tmp, verbose=False)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path
