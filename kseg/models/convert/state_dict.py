"""PyTorch state dicts as numpy arrays, without PyTorch: `torch.save` files (the zip format PyTorch writes
since 1.6), `.safetensors` and `.npz`.

    tensors = kseg.models.convert.state_dict.read("lraspp.pth")   # {"backbone.0.0.weight": ndarray, ...}

A `torch.save` zip holds `data.pkl` (the dict, its tensors pickled as references to storages) and one file per
storage; the pickle is read with an unpickler that knows only the few names a state dict uses (tensors,
storages, OrderedDict), so a file that pickles anything else is refused instead of run.
"""

import collections
import json
import os
import pickle
import struct
import zipfile

import numpy as np

from kseg.errors import KsegError

# torch storage classes (as pickled) and safetensors dtype names -> numpy dtypes; bfloat16 is widened to float32
_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "LongStorage": "int64",
             "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
             "BoolStorage": "bool", "BFloat16Storage": "bfloat16"}
_SAFETENSORS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read(path: str) -> dict:
    """{name: numpy array} of a state dict file (`.pt` / `.pth` / `.bin` from `torch.save`, `.safetensors`,
    `.npz`); a KsegError naming the file when it is none of them. A checkpoint that wraps its state dict
    ({"model": ..., "optimizer": ...} or {"state_dict": ...}) gives the model's."""
    if not os.path.isfile(path):
        raise KsegError(f"{path}: no such file")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    if path.endswith(".safetensors"):
        return _safetensors(path)
    if not zipfile.is_zipfile(path):
        raise KsegError(f"{path}: not a torch.save zip file (files of PyTorch before 1.6 need torch: "
                        "torch.save(torch.load(f), f) rewrites them)")
    found = _torch_zip(path)
    for key in ("model", "state_dict"):
        if isinstance(found, dict) and isinstance(found.get(key), dict):
            found = found[key]
    if not isinstance(found, dict) or not all(isinstance(v, np.ndarray) for v in found.values()):
        raise KsegError(f"{path}: holds no state dict (a dict of tensors)")
    return dict(found)


def _array(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))


def _safetensors(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = _SAFETENSORS.get(entry["dtype"])
        if dtype is None:
            raise KsegError(f"{path}: tensor {name} has dtype {entry['dtype']}, which kseg cannot read")
        tensors[name] = _array(data[start:end], dtype).reshape(entry["shape"]).copy()
    return tensors


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        if module == "torch" and name == "Size":
            return tuple
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid):
        kind, storage, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        if key not in self.storages:
            self.storages[key] = _array(self.archive.read(f"{self.prefix}data/{key}"), storage.dtype)
        return self.storages[key]


def _torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if not pickles:
            raise KsegError(f"{path}: a zip file without data.pkl (not a torch.save file)")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            with archive.open(pickles[0]) as f:
                return _Unpickler(f, archive, prefix).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError) as error:
            raise KsegError(f"{path}: cannot read it as a state dict ({error})") from error
