"""Running artifacts: Keras checkpoints, LiteRT and ONNX files behind one interface
(`kseg.runtime.artifacts`), scoring them (`kseg.runtime.evaluation`), timing them (`kseg.runtime.bench`)
and LiteRT's per-op profiler (`kseg.runtime.profiler`).

    import kseg
    labels = kseg.runtime.predictor("model_int8.tflite").labels(images)  # (N, H, W) class indices
"""

from kseg.runtime.artifacts import (
    ARTIFACTS,
    ArtifactModel,
    ArtifactPredictor,
    KerasPredictor,
    LiteRTModel,
    LiteRTPredictor,
    OnnxModel,
    labels_from_logits,
    load_keras,
    open_artifact,
    predictor,
)

__all__ = ["ARTIFACTS", "ArtifactModel", "ArtifactPredictor", "KerasPredictor", "LiteRTModel", "LiteRTPredictor",
           "OnnxModel", "labels_from_logits", "load_keras", "open_artifact", "predictor"]
