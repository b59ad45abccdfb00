"""Quantization-aware training for the int8 mode, in Keras 3: the converter's int8 scheme simulated, then int8.

The model is fine-tuned with `kseg.deploy.compression.fake_quant.simulate`'s forward pass: batch norm folded into
the convolution before it (moving statistics frozen), weights rounded per output channel (depthwise: per channel),
activations on the int8 grid of their calibrated range, straight-through gradients (Jacob et al. 2018,
arXiv:1712.05877; Krishnamoorthi 2018, arXiv:1806.08342). The fine-tuned weights go back into the plain model,
which `kseg.deploy.litert.to_litert`'s "int8" mode converts, calibrated on the same training images: the file is
exactly what post-training int8 writes from those weights. No tf_keras bridge and no tfmot (whose QAT gave
depthwise kernels one range before batch norm was folded, and lost DeepLabV3+ 0.5-2 mIoU where post-training
int8 lost none); `kseg.deploy.compression.qat` keeps that path for comparison.

The guard: a short fine-tune on little data can overfit, or its ranges drift from the converter's, so the
file that `int8_qat_to_litert` writes is the better of the fine-tuned model's int8 file and the original's
(post-training int8) by mIoU on the calibration images; the sidecar's "fine_tune" record says both scores and
which was kept ("kept": "qat" or "post-training"). The file never scores below post-training int8 there.

    artifact = kseg.deploy.modes.Artifact((128, 128))
    info = kseg.deploy.compression.int8_qat_to_litert(model, "model_qat_int8.tflite", train_split=train,
                                                      artifact=artifact)
    info["fine_tune"]["kept"]   # "qat" or "post-training"

or `kseg export run/best.keras --modes qat_int8`.
"""

import os
import tempfile

import keras
import numpy as np

from kseg import losses, metrics
from kseg.deploy import litert, modes, sidecar
from kseg.deploy.compression import fake_quant, tuning
from kseg.runtime import LiteRTModel, labels_from_logits
from kseg.training import TrainConfig, recipe


def int8_aware_training(model, train_split, *, input_size, steps: int | None = None,
                        learning_rate: float | None = None, settings: modes.ExportSettings | None = None,
                        images=None, verbose: int = 0) -> tuple:
    """Fine-tunes `model` with its int8 file simulated; returns `(tuned, record)`: a model of the same architecture
    whose weights convert to int8 with little loss, and what the fine-tune did. `model` is not changed.

    `images`: the calibration images (default `settings.num_calibration` of `train_split`, as the int8 mode takes
    them). Steps: `steps`, else `settings.qat_steps`, else one pass over the split; learning rate: default
    `QAT_LEARNING_RATE["int8"]`, Adam, decayed to 0 as `kseg train` decays it; loss and augmentation those of
    `kseg.training.recipe.fine_tune` for a short run on this data.
    """
    settings = settings or modes.ExportSettings()
    input_size = tuple(int(s) for s in input_size)
    tuning.check_classes(model, train_split)
    if images is None:
        images = litert.calibration_images(train_split, input_size, settings.num_calibration)
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode: moving statistics, frozen gamma and beta
    simulated, simulation = fake_quant.simulate(tuned, images=images)
    plan = recipe.fine_tune(train_split)
    batch_size = settings.batch_size
    steps = steps if steps is not None else settings.qat_steps
    if steps is None:
        steps = max(1, -(-len(train_split) // batch_size)) if train_split.length is not None else 100
    learning_rate = modes.QAT_LEARNING_RATE["int8"] if learning_rate is None else learning_rate
    decay = keras.optimizers.schedules.PolynomialDecay(learning_rate, int(steps), 0.0, TrainConfig.poly_power)
    simulated.compile(keras.optimizers.Adam(decay), loss=losses.get(plan["loss"]),
                      run_eagerly=steps < modes.EAGER_FINE_TUNE_STEPS)
    simulated.optimizer.build(simulated.trainable_variables)  # now, not in the first traced step (~10 s)
    history = simulated.fit(tuning.batches(train_split, batch_size, input_size), steps_per_epoch=int(steps),
                            epochs=1, shuffle=False, verbose=verbose)
    fake_quant.restore(simulated, tuned)
    return tuned, {"steps": int(steps), "learning_rate": learning_rate, "batch_size": int(batch_size),
                   "loss": plan["loss"], "augment": plan["augment"], "simulated_layers": len(simulation["simulated"]),
                   "folded_batch_norms": len(simulation["folded"]), "quantized_tensors": simulation["quantized"],
                   "final_loss": round(float(history.history["loss"][-1]), 5)}


def calibration_miou(flatbuffer: bytes, images, masks, num_classes: int) -> float:
    """mIoU (points) of a LiteRT model (bytes) on `images` (float32 (1, H, W, 3)) against `masks`."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    with tempfile.TemporaryDirectory(prefix="kseg-qat-") as folder:
        path = os.path.join(folder, "candidate.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        runner = LiteRTModel(path)
        for image, mask in zip(images, masks):
            output = runner.run(image[0])
            labels = output if runner.output_kind == "labels" else labels_from_logits(output)
            confusion += metrics.confusion_matrix(mask, labels, num_classes)
    return 100 * metrics.scores(confusion)["miou"]


def int8_qat_to_litert(model, path: str, *, train_split, artifact: modes.Artifact, origin: modes.Origin | None = None,
                       settings: modes.ExportSettings | None = None, steps: int | None = None,
                       learning_rate: float | None = None, guard: bool = True) -> dict:
    """`int8_aware_training` at `artifact.input_size`, then the int8 mode's file; returns the sidecar dict.

    With `guard` (the default) the written file is the better, by mIoU on the calibration images, of the
    fine-tuned model's int8 file and post-training int8 of `model` (module docstring); `guard=False` writes the
    fine-tuned one whatever (measurements). The sidecar's "fine_tune" has both scores and "kept".
    """
    settings = settings or modes.ExportSettings()
    images, masks = litert.calibration_pairs(train_split, artifact.input_size, settings.num_calibration)
    tuned, record = int8_aware_training(model, train_split, input_size=artifact.input_size, steps=steps,
                                        learning_rate=learning_rate, settings=settings, images=images,
                                        verbose=getattr(settings, "verbose", 0))
    convert = dict(mode="int8", artifact=artifact, calibration=images)
    candidates = {"qat": (tuned, litert.litert_flatbuffer(tuned, **convert))}
    classes = max(2, int(train_split.num_classes))
    record["qat_miou"] = round(calibration_miou(candidates["qat"][1], images, masks, classes), 3)
    kept = "qat"
    if guard:
        candidates["post-training"] = (model, litert.litert_flatbuffer(model, **convert))
        record["post_training_miou"] = round(calibration_miou(candidates["post-training"][1], images, masks,
                                                              classes), 3)
        kept = "qat" if record["qat_miou"] >= record["post_training_miou"] else "post-training"
    record["kept"] = kept
    record["calibration_images"] = len(images)
    chosen, flatbuffer = candidates[kept]
    origin = (origin or modes.Origin.of(model)).with_classes(train_split.class_names)
    return litert.write_litert(flatbuffer, path, model=chosen, mode="int8", artifact=artifact, origin=origin,
                               calibration=sidecar.calibration_record("int8", train_split, settings.num_calibration),
                               extras={"training": "qat", "fine_tune": record})
