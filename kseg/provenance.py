"""Where an artifact comes from: architecture, builder arguments and the kseg version that made it.

A checkpoint's provenance is read from its sidecar (`best.keras.json`, see `write_keras_sidecar`) or,
for a checkpoint of a `kseg train` run, from the run's `config.json`; exports copy it into their own
sidecar, next to the export mode and the calibration data:

    kseg.provenance.of_checkpoint("runs/kseg/best.keras")
    # {"checkpoint": "runs/kseg/best.keras", "architecture": "deeplabv3plus", "builder_args": {...}, ...}
"""

import os

from kseg import files


def version():
    from kseg import __version__

    return __version__


def record(architecture, builder_args=None, **extra):
    """A provenance dict for an artifact made now, by this kseg."""
    return {"architecture": architecture, "builder_args": dict(builder_args or {}), "kseg_version": version(),
            **extra}


def write_keras_sidecar(path, architecture, builder_args=None, **extra):
    """Writes `<path>.json` next to a `.keras` checkpoint: what `of_checkpoint` reads first."""
    files.write_json(path + ".json", record(architecture, builder_args, **extra))


def of_checkpoint(path, model=None):
    """What is known of the checkpoint at `path`: its sidecar, else its run's config.json, else the model's name.

    Keys: checkpoint, architecture, builder_args (None when unknown), kseg_version (of the kseg that made
    the checkpoint; None when unknown), and from a run's config: num_classes, class_names, data, crop_size.
    """
    found = {"checkpoint": path, "architecture": model.name if model is not None else None,
             "builder_args": None, "kseg_version": None}
    if path is None:
        return found
    sidecar = files.read_json(path + ".json")
    if isinstance(sidecar, dict):
        return {**found, **sidecar}
    run = files.read_json(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"))
    if isinstance(run, dict) and "model" in run:
        found.update(architecture=run["model"], builder_args=run.get("model_kwargs") or {},
                     kseg_version=run.get("kseg_version"))
        found.update({key: run[key] for key in ("num_classes", "class_names", "data", "crop_size") if key in run})
    return found
