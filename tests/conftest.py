import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Folder-check caches of the tests' folders stay out of the user's ~/.cache (subprocesses inherit this).
os.environ["KSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="kseg-test-cache-")
# Keras's cache (ImageNet weights the recipe starts from) is the tests' own: a developer's ~/.keras must not change
# what the recipe chooses. Set before Keras is imported, which reads it once.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="kseg-test-keras-")

import keras  # noqa: E402
import pytest  # noqa: E402


def tensorflow_backend():
    return keras.backend.backend() == "tensorflow"


requires_tensorflow = pytest.mark.skipif(
    not tensorflow_backend(), reason="TensorFlow-only stage (data, export); CI runs it under the TF backend"
)
