"""Writing artifacts safely and measuring them: atomic writes, JSON files, sizes (on disk and gzipped)."""

import gzip
import json
import os
import tempfile


def write_atomic(path, data):
    """Writes bytes to `path` through a temporary file in the same folder and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=directory, prefix=".tmp-", delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


def write_json(path, value):
    """`value` as indented JSON at `path`, written atomically."""
    write_atomic(path, json.dumps(value, indent=2).encode())


def read_json(path):
    """The JSON at `path`, or None when there is no such file or it does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def size(path):
    """Bytes of a file, or of every file below a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def gzip_size(path):
    """Bytes of `path` gzip-compressed (level 9): the download size, which pruning's zeros shrink."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))
