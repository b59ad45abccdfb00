"""The one writer of exported files: every artifact (LiteRT, ONNX) is published with its JSON sidecar here.

A converter hands over the file's bytes (or a finished temporary file) and its extras; `publish` opens the
file with the runtime that will run it (a file the runtime refuses never takes the artifact's name),
builds the sidecar record (format, mode, classes, input, output, ops, calibration, provenance, version,
extras), then renames the file into place and writes `<file>.json` beside it, each atomically:

    info = kseg.deploy.sidecar.publish(flatbuffer, "model_int8.tflite", model=model, mode="int8",
                                       artifact=kseg.deploy.modes.Artifact((257, 257)),
                                       origin=kseg.deploy.modes.Origin.of(model))
    info["input"]["quantization"]  # {"scale": 1.0, "zero_point": 0}: feed raw pixels
"""

import os
import tempfile

from kseg import files, provenance
from kseg.deploy import modes
from kseg.runtime import open_artifact

NORMALISATION = "RGB pixels in [0, 255]; the model normalises inside"


def publish(content: bytes | str, path: str, *, model, mode: str, artifact: modes.Artifact, origin: modes.Origin,
            calibration: dict | None = None, extras: dict | None = None) -> dict:
    """Writes `content` (bytes, or the path of a finished temporary file in `path`'s folder, which is moved)
    as the artifact `path` and its sidecar `<path>.json`; returns the sidecar dict."""
    tmp = _temporary(content, path)
    try:
        info = record(tmp, model=model, mode=mode, artifact=artifact, origin=origin, calibration=calibration,
                      extras=extras)
        files.publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    files.write_json(path + ".json", info)
    return info


def record(path: str, *, model, mode: str, artifact: modes.Artifact, origin: modes.Origin,
           calibration: dict | None = None, extras: dict | None = None) -> dict:
    """The sidecar of the artifact file at `path`, read from the file itself where the file knows."""
    spec = modes.get(mode)
    runner = open_artifact(path)
    fixed_batch = spec.format == "litert"  # ONNX files take any batch
    return {
        "format": spec.format,
        "mode": mode,
        "model": model.name,
        "source": origin.source,
        "num_classes": int(model.output_shape[-1]),
        "class_names": list(origin.class_names) if origin.class_names else None,
        "input": {
            **({"name": runner.input["name"]} if "name" in runner.input else {}),
            "shape": [1 if fixed_batch else None, *artifact.input_size, 3],
            "dtype": runner.input["dtype"].__name__,
            "quantization": runner.input["quantization"],
            "normalisation": NORMALISATION,
        },
        "output": {
            "kind": artifact.output,
            **({"name": runner.output["name"]} if "name" in runner.output else {}),
            "shape": [int(s) for s in runner.output["shape"]] if fixed_batch
            else [None, *(int(s) for s in runner.output["shape"][1:])],
            "dtype": runner.output["dtype"].__name__,
            "quantization": runner.output["quantization"],
        },
        "ops": runner.ops(),
        "size_bytes": os.path.getsize(path),
        "gzip_bytes": files.gzip_size(path),  # the download size
        "calibration": calibration,
        "provenance": origin.provenance or provenance.of_checkpoint(origin.source, model),
        "kseg_version": provenance.version(),
        **(extras or {}),
    }


def calibration_record(mode: str, calibration, num_calibration: int) -> dict | None:
    """The sidecar's record of what calibrated a `mode` file (`calibration`: a `kseg.data.Split` or a list of
    arrays): image count and data; None where nothing did."""
    if not modes.MODES[mode].calibrates or calibration is None:
        return None
    if isinstance(calibration, list):
        return {"images": len(calibration), "data": "given arrays"}
    return {"images": min(num_calibration, calibration.length or num_calibration),
            "data": calibration.description}


def _temporary(content, path):
    if isinstance(content, str):
        return content
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1],
                                     delete=False) as f:
        f.write(content)
    return f.name
