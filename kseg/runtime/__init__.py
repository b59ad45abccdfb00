"""Running trained models: LiteRT and ONNX files behind one interface (`kseg.runtime.artifacts`), labels from
them or from Keras checkpoints (`kseg.runtime.predictors`), pictures of any size, tiled and augmented
(`kseg.runtime.segmenter`: `kseg.Segmenter`, with `tiling`, `tta`, `images`, `video`), scoring them
(`kseg.runtime.evaluation`), timing them (`kseg.runtime.bench`) and LiteRT's per-op profiler
(`kseg.runtime.profiler`).

    import kseg
    labels = kseg.runtime.predictor("model_int8.tflite").labels(images)  # (N, H, W) class indices
    labels = kseg.Segmenter("model_int8.tflite", tile="auto").predict("photo.jpg")  # (H, W)
"""

from kseg.runtime.artifacts import (
    ARTIFACTS,
    ArtifactModel,
    LiteRTModel,
    OnnxModel,
    labels_from_logits,
    load_keras,
    open_artifact,
)
from kseg.runtime.predictors import ArtifactPredictor, KerasPredictor, predictor
from kseg.runtime.segmenter import Segmenter

__all__ = ["ARTIFACTS", "ArtifactModel", "ArtifactPredictor", "KerasPredictor", "LiteRTModel", "OnnxModel",
           "Segmenter", "labels_from_logits", "load_keras", "open_artifact", "predictor"]


def __getattr__(name):
    import kseg

    return kseg.submodule(__name__, name)
