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

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from kseg import console
from kseg.deploy import gpu, metadata, modes, rewrites, sidecar
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
    faster (`kseg.deploy.rewrites`), TFLite metadata embedded, then the file and its sidecar (`calibration`:
    `sidecar.calibration_record`'s; plus the `extras` entries; float32 and float16 files also get `"gpu"`,
    `kseg.deploy.gpu.check`'s report); returns the sidecar dict."""
    origin = origin if origin is not None else modes.Origin.of(model)
    if modes.MODES[mode].calibrates:  # integer activations
        flatbuffer = rewrites.int8(flatbuffer)
    flatbuffer, embedded = _with_metadata(flatbuffer, origin.class_names, int(model.output_shape[-1]))
    extras = {"metadata": embedded, **(extras or {})}
    if mode in GPU_CHECKED:  # what a phone's GPU delegate would run (kseg.deploy.gpu)
        extras["gpu"] = gpu.check(flatbuffer)
    return sidecar.publish(flatbuffer, path, model=model, mode=mode, artifact=artifact, origin=origin,
                           calibration=calibration, extras=extras)


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
