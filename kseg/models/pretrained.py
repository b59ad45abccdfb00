"""Model folders: a trained model with what it needs to be used again (`save_pretrained`), and one way to load
it from a folder, a `.keras` checkpoint or the Hugging Face Hub, with another class count if asked
(`from_pretrained`).

    kseg.models.save_pretrained("runs/a/best.keras", "my-model")   # architecture etc. from its sidecar
    model = kseg.models.from_pretrained("my-model")                 # or "hf://org/name@revision"
    model = kseg.models.from_pretrained("my-model", num_classes=3)  # new classifiers, every other weight kept

A folder holds `model.keras` (with its provenance sidecar `model.keras.json`, so `kseg export` reads it like any
checkpoint), `config.json` (architecture, builder arguments, classes, input conventions, provenance, kseg
version) and a `README.md` model card. It is written to a temporary folder first and renamed into place.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence

import keras

from kseg import files
from kseg import provenance as prov
from kseg.errors import KsegError, first_line
from kseg.models import hub, registry

FORMAT = "kseg-model"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def input_conventions(trained_size=None) -> dict:
    """What every kseg model takes: RGB pixels in [0, 255] (normalised inside the graph), 3 channels, any size;
    `trained_size` (height, width) is the crop it was trained at, when known."""
    return {"color": "RGB", "range": [0, 255], "channels": 3, "normalization": "inside the model",
            "any_size": True, "trained_size": list(trained_size) if trained_size else None}


def save_pretrained(model: "keras.Model | str", directory: str, *, architecture: str | None = None,
                    builder_args: dict | None = None, class_names: Sequence[str] | None = None,
                    trained_size: tuple[int, int] | None = None,
                    provenance: dict | None = None, overwrite: bool = False) -> str:
    """Writes a model folder at `directory` and returns its path.

    Args:
        model: a Keras model, or the path of a `.keras` checkpoint (its sidecar, `best.keras.json` for a
            `kseg train` checkpoint, then supplies what is not given here).
        directory: the folder to write; it must not exist unless `overwrite=True`.
        architecture: the registry name (`kseg.models.names()`); needed to load with another class count.
        builder_args: the builder's keyword arguments (not num_classes / input_shape), JSON-serialisable.
        class_names: one name per output channel.
        trained_size: (height, width) of the training crops, if known.
        provenance: anything else about where the model comes from (data, run, commit...).
        overwrite: replace an existing folder (atomically: the old one stays until the new one is complete).

    Example:

        model = kseg.models.get("lraspp", num_classes=3, tiny=True)
        kseg.models.save_pretrained(model, "/tmp/lraspp-tiny", architecture="lraspp",
                                    builder_args=kseg.models.architecture("lraspp").tiny)
    """
    source = model if isinstance(model, str) else None
    if isinstance(model, str):
        model = load_keras_file(model)
    known = prov.of_checkpoint(source, model) if source else {}
    architecture = architecture or known.get("architecture") or None
    if builder_args is None:
        builder_args = known.get("builder_args")
    num_classes = int(model.output_shape[-1])
    class_names = list(class_names or known.get("class_names") or []) or None
    if class_names is not None and len(class_names) != num_classes:
        raise KsegError(f"{directory}: {len(class_names)} class names for a model with {num_classes} outputs")
    trained_size = trained_size or known.get("crop_size")
    extra = {key: value for key, value in known.items()
             if key not in ("architecture", "builder_args", "kseg_version", "num_classes", "class_names")}
    record = {**extra, **(provenance or {}),
              "made_by_kseg": known.get("kseg_version") or prov.version()}
    config = {"format": FORMAT, "format_version": 1, "architecture": architecture,
              "builder_args": builder_args, "num_classes": num_classes, "class_names": class_names,
              "input": input_conventions(trained_size), "provenance": record,
              "kseg_version": prov.version(), "model_file": MODEL_FILE}
    try:
        text = json.dumps(config, indent=2)
    except TypeError as error:
        raise KsegError(f"{directory}: builder arguments or provenance are not JSON ({error})") from None
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise KsegError(f"{directory} exists; choose another folder or pass overwrite=True")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(directory) + "-")
    try:
        model.save(os.path.join(tmp, MODEL_FILE))
        prov.write_keras_sidecar(
            os.path.join(tmp, MODEL_FILE), architecture, builder_args, num_classes=num_classes,
            class_names=class_names, crop_size=config["input"]["trained_size"],
            **{k: v for k, v in extra.items() if k in ("data", "checkpoint")})
        files.write_atomic(os.path.join(tmp, CONFIG_FILE), text.encode())
        files.write_atomic(os.path.join(tmp, CARD_FILE), model_card(config, os.path.basename(directory)).encode())
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_folder(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(tmp, directory):
    if not os.path.exists(directory):
        os.rename(tmp, directory)
        return
    old = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=".old-")
    os.rename(directory, os.path.join(old, "x"))
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def model_card(config: dict, title: str) -> str:
    """The folder's README.md: YAML front matter the Hub reads, then what the model is and how to load it."""
    names = config["class_names"]
    size = config["input"]["trained_size"]
    args = ", ".join(f"{k}={v!r}" for k, v in (config["builder_args"] or {}).items())
    lines = ["---", "library_name: keras", "pipeline_tag: image-segmentation", "tags:", "- kseg", "- keras",
             "- image-segmentation", "---", "", f"# {title}", "",
             f"A kseg semantic-segmentation model: `{config['architecture'] or 'unknown architecture'}"
             f"({args})`, {config['num_classes']} classes"
             + (f" ({', '.join(map(str, names))})" if names else "") + ".", "",
             "Input: RGB pixels in [0, 255] of any size (normalised inside the model)"
             + (f"; trained at {size[0]}x{size[1]}" if size else "") + ". Output: per-pixel logits at its size.",
             "", "```python", "import kseg", "", f'model = kseg.models.from_pretrained("{title}")  # a folder or '
             'hf://org/name', "logits = model(images)  # (batch, height, width, classes)", "```", "",
             f"Made with kseg {config['kseg_version']}.", ""]
    data = config["provenance"].get("data")
    if data:
        lines[-1:] = [f"Trained on: {data}.", ""]
    return "\n".join(lines)


def load_keras_file(path: str) -> keras.Model:
    """A `.keras` file as an uncompiled model; a KsegError naming the file for a missing or unreadable one."""
    if not os.path.isfile(path):
        raise KsegError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise KsegError(f"{path}: not a Keras model file: it is corrupt or truncated (not a zip archive)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise KsegError(f"{path}: cannot load Keras model ({first_line(error)})") from error


@dataclasses.dataclass
class Loaded:
    """What `load` found: the model, the folder's config, the local folder, and the layers a class-count change
    reinitialised (their names; empty when the class count stayed)."""

    model: keras.Model
    config: dict
    folder: str | None
    source: str
    reinitialised: list = dataclasses.field(default_factory=list)


def read_config(handle: str) -> tuple[str, dict]:
    """(local folder, config.json) of a model folder or `hf://` handle, without loading the model."""
    folder = hub.local_folder(handle)
    if not os.path.isdir(folder):
        raise KsegError(f"{handle}: no such folder")
    config = files.read_json(os.path.join(folder, CONFIG_FILE))
    if not isinstance(config, dict):
        raise KsegError(f"{handle}: no readable {CONFIG_FILE} (not a kseg model folder)")
    if config.get("format") != FORMAT:
        raise KsegError(f"{handle}: {foreign_format(config)}")
    architecture = config.get("architecture")
    if architecture is not None and architecture not in registry.names():
        raise KsegError(f"{handle}: unknown architecture {architecture!r}; kseg knows {', '.join(registry.names())}")
    return folder, config


def foreign_format(config: dict) -> str:
    """Why a config.json that kseg did not write cannot be loaded, in a few words."""
    name = str(config.get("registered_name") or config.get("class_name") or "")
    if name.startswith("keras_hub>") or str(config.get("module", "")).startswith("keras_hub"):
        family = name.split(">")[-1] or "model"
        return (f"a keras-hub {family} preset: kseg has no converter from keras-hub's weights yet "
                "(kseg.models.convert knows torchvision's)")
    return f"{CONFIG_FILE} is not a kseg model folder's (no \"format\": \"{FORMAT}\")"


def load(handle: str, num_classes: int | None = None, input_shape: tuple | None = None) -> Loaded:
    """`from_pretrained`, also saying where it loaded from and which layers a class-count change reinitialised.

    `input_shape`: rebuild the architecture for this input shape (`(None, None, 3)`: any size) and copy the
    weights, whatever the saved model's shape; a model rebuilt so follows the global dtype policy too."""
    if handle.endswith(".keras") and not hub.is_hub(handle):
        model = load_keras_file(handle)
        known = prov.of_checkpoint(handle, model)
        config = {"architecture": known.get("architecture"), "builder_args": known.get("builder_args"),
                  "num_classes": int(model.output_shape[-1]), "class_names": known.get("class_names")}
        if config["architecture"] not in registry.names():
            config["architecture"] = None
        folder = None
    else:
        folder, config = read_config(handle)
        model = load_keras_file(os.path.join(folder, config.get("model_file") or MODEL_FILE))
    loaded = Loaded(model, config, folder, handle)
    classes = int(model.output_shape[-1])
    if (num_classes is not None and num_classes != classes) or input_shape is not None:
        loaded.model, loaded.reinitialised = rebuild(model, num_classes or classes, config, handle, input_shape)
    if num_classes is not None and num_classes != classes:
        loaded.config = {**config, "num_classes": num_classes, "class_names": None}
    return loaded


def init_settings(handle: str, model: str | None = "auto", model_kwargs: dict | None = None) -> dict:
    """{"model", "model_kwargs"} of a training run that starts from `handle` (`kseg train --init`): its architecture
    and builder arguments. A KsegError where it records none, or where `model` / `model_kwargs` ask for others."""
    if handle.endswith(".keras") and not hub.is_hub(handle):
        if not os.path.isfile(handle):
            raise KsegError(f"{handle}: no such file")
        known = prov.of_checkpoint(handle)
    else:
        known = read_config(handle)[1]
    architecture, args = known.get("architecture"), known.get("builder_args")
    if architecture not in registry.names() or args is None:
        raise KsegError(f"{handle}: records no architecture and builder arguments, which training from it needs")
    if model not in (None, "auto", architecture) or (model_kwargs is not None and model_kwargs != args):
        raise KsegError(f"{handle} is {architecture} with {args}: leave --model and --model-arg out, or match them")
    return {"model": architecture, "model_kwargs": dict(args)}


def from_pretrained(handle: str, num_classes: int | None = None) -> keras.Model:
    """The model of a kseg model folder, a `.keras` checkpoint or `hf://org/name[@revision]` (Hugging Face Hub,
    through `huggingface_hub`: `pip install "kseg[hub]"`; `HF_HUB_OFFLINE=1` uses its cache alone).

    `num_classes`: when it differs from the model's, the architecture is rebuilt with that many classes and every
    weight that still fits is copied (all but the classifiers'; `load(...).reinitialised` names those).

    Example:

        model = kseg.models.get("unet", num_classes=2, tiny=True)
        kseg.models.save_pretrained(model, "/tmp/unet-tiny", architecture="unet",
                                    builder_args=kseg.models.architecture("unet").tiny, overwrite=True)
        kseg.models.from_pretrained("/tmp/unet-tiny", num_classes=5).output_shape  # (None, None, None, 5)
    """
    return load(handle, num_classes).model


def rebuild(model: keras.Model, num_classes: int, config: dict, handle: str = "model",
            input_shape: tuple | None = None) -> tuple:
    """(the architecture rebuilt with `num_classes` for `input_shape` (default: the model's), names of the layers
    left at their fresh initialisation): weights are copied layer by layer (same builder, same layer order)
    wherever every shape still fits, so only the classifiers of a new class count start afresh."""
    architecture, builder_args = config.get("architecture"), config.get("builder_args")
    if architecture is None or builder_args is None:
        raise KsegError(f"{handle}: rebuilding it ({model.output_shape[-1]} -> {num_classes} classes) needs the "
                        "architecture and builder arguments, which it does not record")
    shape = tuple(input_shape or model.input_shape[1:])
    fresh = registry.get(architecture, num_classes, input_shape=shape, **builder_args)
    ours, theirs = fresh.layers, model.layers
    if [type(layer).__name__ for layer in ours] != [type(layer).__name__ for layer in theirs]:
        raise KsegError(f"{handle}: {architecture}({builder_args}) no longer builds the saved model's layers")
    reinitialised = []
    for layer, old in zip(ours, theirs):
        if not layer.weights:
            continue
        weights = old.get_weights()
        if [w.shape for w in weights] == [tuple(v.shape) for v in layer.weights]:
            layer.set_weights(weights)
        else:
            reinitialised.append(layer.name)
    return fresh, reinitialised
