"""A Keras model as a TensorFlow SavedModel (what TF Serving and TensorFlow.js converters take).

    kseg.deploy.savedmodel.save(model, "exported/model_savedmodel", input_size=(512, 512))
"""

import os
import shutil
import tempfile

import tensorflow as tf


def save(model, path: str, input_size: tuple[int, int] | None = None) -> str:
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
