"""Quantization-aware training for the int4 mode: int4 weights learned in Keras 3, then ai-edge-quantizer's int4.

Post-training int4 rounds each convolution kernel to 15 levels per output channel and can cost a small
model many points (a kseg U-Net on MNI152 tissue: 94.9 -> 87.1 mIoU). Here the model is fine-tuned with
those kernels rounded in the forward pass (straight-through estimator: Bengio et al. 2013; Jacob et al.
2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"),
so its float weights learn values that survive the rounding; `kseg.deploy.quantizer`'s int4 recipe then rounds
them exactly as the fine-tune did:

- per output channel, symmetric, levels -7..7 times max|w| / 7: AEQ's int4 grid;
- the rounding of a kernel is unchanged by a positive or negative per-channel factor, so rounding the
  kernel before its batch norm is folded in equals rounding the folded kernel LiteRT stores;
- only the convolutions the int4 recipe gives int4 weights are rounded (not its int8 ends, not the
  denylisted ones); activations are not simulated: int8 activations cost little (see `kseg.deploy.quantizer`).

Plain Keras 3 (`keras.ops`, `model.fit`), no tf_keras bridge or tfmot: any kseg model fine-tunes.

    tuned, record = kseg.deploy.compression.int4_aware_training(model, train, input_size=(192, 224))
    kseg.deploy.stage.convert(tuned, "model_int4.tflite", mode="int4", artifact=kseg.deploy.modes.Artifact((192, 224)),
                              train=train)

or in one step, `kseg export run/best.keras --modes qat_int4`.
"""

import keras
from keras import ops

from kseg import losses
from kseg.deploy import litert_graph, modes, quantizer
from kseg.deploy.compression import fake_quant, tuning
from kseg.training import TrainConfig, recipe


@keras.saving.register_keras_serializable(package="kseg")
class FakeQuantConv2D(keras.layers.Conv2D):
    """A Conv2D whose kernel is rounded to `bits`-bit symmetric levels per output channel in the forward pass;
    gradients pass straight through the rounding to the float kernel.

        layer = FakeQuantConv2D(bits=4, filters=16, kernel_size=3, padding="same")
    """

    def __init__(self, bits=4, **kwargs):
        super().__init__(**kwargs)
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"bits must be between 2 and 8, got {bits}")
        if self.data_format != "channels_last":
            raise ValueError("FakeQuantConv2D takes channels_last inputs (kseg's models are channels_last)")
        self.bits = int(bits)

    def call(self, inputs):
        outputs = self.convolution_op(inputs, fake_quantize(self.kernel, self.bits))
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (len(outputs.shape) - 1) + (-1,)))
        return outputs if self.activation is None else self.activation(outputs)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}


def fake_quantize(kernel, bits=4):
    """`kernel` (H, W, in, out) on the symmetric `bits`-bit grid of each output channel; straight-through gradient
    (`kseg.deploy.compression.fake_quant.symmetric_per_channel`, which the int8 fine-tune shares)."""
    return fake_quant.symmetric_per_channel(kernel, bits, (0, 1, 2))


def int4_layers(model, input_size, settings=None):
    """The Conv2D layers of `model` whose kernels the int4 recipe stores in int4: (names, others).

    `others` lists the layers behind other int4 weights (a layer type this module does not simulate):
    their weights are rounded after the fine-tune only, as in post-training int4.
    """
    settings = settings or modes.ExportSettings()
    graph = litert_graph.ops(quantizer.float_flatbuffer(model, modes.Artifact(input_size)))
    denylist = litert_graph.Denylist.of(settings, graph)
    kept = {op.index for op in quantizer.int8_ends(graph)}
    convs = {layer.name for layer in model.layers if type(layer) is keras.layers.Conv2D}
    names, others = [], []
    for op in graph:
        if op.name not in quantizer.INT4_OPS or op.index in kept or denylist.covers(op):
            continue
        layer = op.describe(model)["layer"]
        (names if layer in convs else others).append(layer)
    return sorted(set(names)), sorted(set(others))


def with_fake_quantization(model, layer_names, bits=4):
    """A clone of `model` (same weights) whose layers `layer_names` are FakeQuantConv2D at `bits`."""
    chosen = set(layer_names)

    def clone(layer):
        if layer.name in chosen:
            return FakeQuantConv2D(bits=bits, **layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def int4_aware_training(model, train_split, *, input_size, steps=None, learning_rate=None, batch_size=None,
                        settings=None, layers=None, verbose=0):
    """Fine-tunes `model` with its int4 kernels simulated; returns `(tuned, record)`: a model of the same
    architecture (plain Conv2D layers) whose weights export to int4 with little loss, and what the fine-tune
    did (steps, learning rate, batch size, loss, augmentation, the layers rounded and the int4 layers that
    could not be, last loss). `model` is not changed.

    Loss and augmentation are those `kseg.training.recipe` picks for a short run on `train_split` (`recipe.fine_tune`);
    batch size: default `settings.batch_size`; batch norm runs on its moving statistics (small fine-tuning
    batches would move a trained model's). `layers`: the Conv2D layers to round (default `int4_layers`: those
    the int4 recipe makes int4; `()` fine-tunes the same way without rounding, a control).
    `steps`: default `settings.qat_steps`, or one pass over the split and at least `QAT_INT4_MIN_STEPS`;
    learning rate: default `QAT_LEARNING_RATE["int4"]`, Adam, decayed to 0 as `kseg train` decays it (a
    constant rate leaves the model at a noisy point: DSB2018 U-Net, post-training int4 94.07 mIoU, QAT 93.74
    at a constant rate, 94.05 decayed).
    """
    settings = settings or modes.ExportSettings()
    input_size = tuple(int(s) for s in input_size)
    tuning.check_classes(model, train_split)
    names, others = int4_layers(model, input_size, settings) if layers is None else (list(layers), None)
    twin = with_fake_quantization(model, names)
    for layer in twin.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode: moving statistics, frozen gamma and beta
    plan = recipe.fine_tune(train_split)
    batch_size = batch_size or settings.batch_size
    if steps is None:
        steps = settings.qat_steps
    if steps is None:
        per_pass = -(-len(train_split) // batch_size) if train_split.length is not None else 0
        steps = max(per_pass, modes.QAT_INT4_MIN_STEPS)
    learning_rate = modes.QAT_LEARNING_RATE["int4"] if learning_rate is None else learning_rate
    decay = keras.optimizers.schedules.PolynomialDecay(learning_rate, int(steps), 0.0, TrainConfig.poly_power)
    twin.compile(keras.optimizers.Adam(decay), loss=losses.get(plan["loss"]),
                 run_eagerly=steps < modes.EAGER_FINE_TUNE_STEPS)
    twin.optimizer.build(twin.trainable_variables)  # now, not in the first traced step (~10 s)
    history = twin.fit(tuning.batches(train_split, batch_size, input_size), steps_per_epoch=int(steps), epochs=1,
                       shuffle=False, verbose=verbose)
    tuned = keras.models.clone_model(model)
    tuned.set_weights(twin.get_weights())
    return tuned, {"steps": int(steps), "learning_rate": learning_rate, "batch_size": int(batch_size),
                   "loss": plan["loss"], "augment": plan["augment"], "simulated_layers": names,
                   "unsimulated_int4_layers": others,
                   "final_loss": round(float(history.history["loss"][-1]), 5)}
