"""QAT that earns its place? Post-training full int8 against quantization-aware training (issue 10, part 4).

    python benchmarks/qat_recovery.py                       # ~4 min on 2 cores (two seeds)
    python benchmarks/qat_recovery.py --lever-steps 400 --lever-lr 1e-4

A small plain convolution stack (Rescaling, 3x3 convolution, 2x2 max pooling, two 3x3 convolutions
"features" and "mixer" (dilation 2), bilinear 2x upsampling, 1x1 classifier: standard Keras layers, so
kseg's tf_keras bridge and tfmot take it) is trained briefly on kseg's synthetic shapes, once per seed.
Versions of it are exported through `kseg.stage.export_artifact` in float32, int8 and qat_int8 and
evaluated on the synthetic val split:

(a) "normal": the trained model as it is. Full int8 is expected to cost little: QAT has little to win.
(b) "outlier xF": the same function with the busiest channel of the layer "features" scaled by F and
    the matching input channel of "mixer" divided by F (F = 1000, 100, 30 by default). ReLU commutes
    with a positive scale, so float32 is unchanged up to rounding; the per-tensor int8 scale of that
    activation is set by the one large channel and the others round to a few levels, so post-training
    int8 loses mIoU.

QAT runs with kseg's defaults (ExportSettings: one pass over the training split, learning rate 1e-5)
and, as the one lever, with more steps and a larger learning rate (--lever-steps, --lever-lr).
"Recovered" is (qat - int8) / (float32 - int8): the share of the int8 loss that QAT wins back.
Writes benchmarks/results/qat_recovery.{json,md}.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.dirname(HERE))


def build(num_classes, width):
    import keras

    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", dilation_rate=2, activation="relu", name="mixer")(x)
    x = keras.layers.UpSampling2D(interpolation="bilinear", name="upsample")(x)
    outputs = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    return keras.Model(inputs, outputs, name="plain")


def make_outlier(model, train, factor=1000.0):
    """`model` with the busiest channel of "features" scaled by `factor` and "mixer"'s weights from it divided."""
    import keras
    import numpy as np

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    x = np.stack([image for image, _ in train.examples.take(8).as_numpy_iterator()]).astype("float32")
    features = keras.ops.convert_to_numpy(keras.Model(twin.input, twin.get_layer("features").output)(x))
    channel = int(np.argmax(features.mean((0, 1, 2))))
    kernel, bias = twin.get_layer("features").get_weights()
    kernel[..., channel] *= factor
    bias[channel] *= factor
    twin.get_layer("features").set_weights([kernel, bias])
    kernel, bias = twin.get_layer("mixer").get_weights()
    kernel[:, :, channel, :] /= factor
    twin.get_layer("mixer").set_weights([kernel, bias])
    a = keras.ops.convert_to_numpy(model(x))
    b = keras.ops.convert_to_numpy(twin(x))
    return twin, channel, float(np.abs(a - b).max()), float(np.abs(a).max())


def share(f, q, t):
    loss = f - q
    return None if loss <= 0 else (t - q) / loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=480)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--num-calibration", type=int, default=32)
    parser.add_argument("--factors", type=float, nargs="+", default=[1000.0, 100.0, 30.0],
                        help="outlier scales of the 'features' channel (one outlier model each)")
    parser.add_argument("--lever-steps", type=int, default=300)
    parser.add_argument("--lever-lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one trained model per seed (the seed also seeds each export)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    import kseg
    from kseg import modes, stage

    started = time.perf_counter()
    size = (args.size, args.size)
    train = kseg.data.load("synthetic", "train", num_images=args.train_images, size=size)
    val = kseg.data.load("synthetic", "val", num_images=args.val_images, size=size)
    masks = np.stack([mask for _, mask in val.examples.as_numpy_iterator()])
    background_only = 100 * kseg.metrics.scores(
        kseg.metrics.confusion_matrix(masks, np.zeros_like(masks), val.num_classes))["miou"]
    rows, outliers, train_seconds = [], {}, {}

    for seed in args.seeds:
        t_train = time.perf_counter()
        keras.utils.set_random_seed(seed)
        model = build(train.num_classes, args.width)
        model.compile(keras.optimizers.Adam(3e-3), loss=kseg.losses.CrossEntropy())
        model.fit(kseg.data.pipeline(train, 16, size=size, training=True), epochs=args.epochs, verbose=0)
        train_seconds_seed = time.perf_counter() - t_train
        print(f"seed {seed}: trained {args.epochs} epochs in {train_seconds_seed:.0f} s", flush=True)
        variants = [("normal", model)]
        for factor in args.factors:
            twin, channel, max_diff, max_logit = make_outlier(model, train, factor)
            outliers[f"seed {seed}, x{factor:g}"] = {"channel": channel, "float_max_diff": max_diff,
                                                     "max_logit": max_logit}
            variants.append((f"outlier x{factor:g}", twin))
            print(f"outlier x{factor:g}: channel {channel} of 'features', float logits differ by {max_diff:.2e} "
                  f"(max |logit| {max_logit:.1f})", flush=True)

        default = modes.ExportSettings(num_calibration=args.num_calibration)
        lever = modes.ExportSettings(num_calibration=args.num_calibration, qat_steps=args.lever_steps,
                                     qat_learning_rate=args.lever_lr)
        default_steps = -(-args.train_images // default.batch_size)
        qat_runs = [("qat_int8", default,
                     f"defaults: {default_steps} steps (one pass), lr {default.qat_learning_rate:g}"),
                    ("qat_int8 (lever)", lever, f"{args.lever_steps} steps, lr {args.lever_lr:g}")]

        with tempfile.TemporaryDirectory() as tmp:
            for name, net in variants:
                scores, seconds = {}, {}
                for label, mode, settings in [("float32", "float32", default), ("int8", "int8", default)] + \
                                             [(label, "qat_int8", s) for label, s, _ in qat_runs]:
                    path = os.path.join(tmp, f"{name}_{label.replace(' ', '_').strip('()')}.tflite")
                    keras.utils.set_random_seed(seed)
                    tf.random.set_seed(seed)
                    t0 = time.perf_counter()
                    result = stage.export_artifact(net, path, mode, size, train=train, val=val, settings=settings)
                    seconds[label] = time.perf_counter() - t0
                    scores[label] = 100 * result.miou
                    print(f"  {name:14s} {label:17s} mIoU {scores[label]:6.2f}  ({seconds[label]:.0f} s)",
                          flush=True)
                f, q = scores["float32"], scores["int8"]
                for label, _, how in qat_runs:
                    t = scores[label]
                    rows.append({"seed": seed, "model": name, "qat": label, "qat_settings": how, "float32": f,
                                 "int8": q, "int8_drop": f - q, "qat_int8": t, "qat_drop": f - t,
                                 "recovered": share(f, q, t),
                                 "seconds": {k: seconds[k] for k in ("float32", "int8", label)}})

        train_seconds[seed] = train_seconds_seed

    def pct(row):
        if row["recovered"] is None:
            return "n/a (int8 lost nothing)"
        value = f"{100 * row['recovered']:.0f}%"
        if row["qat_int8"] < background_only + 0.5:
            value += " (QAT file predicts about background only)"
        return f"({value}: int8 lost under 1 point, noise)" if row["int8_drop"] < 1 else value

    lines = ["# QAT recovery: post-training int8 against quantization-aware training", "",
             f"Synthetic shapes {args.size}x{args.size}, {args.train_images} train / {args.val_images} val images; a "
             f"plain 4-convolution net ({args.width}/{2 * args.width} channels, one 2x pooling) trained "
             f"{args.epochs} epochs (one model per seed: {', '.join(map(str, args.seeds))}); int8 calibrated on "
             f"{args.num_calibration} training images. mIoU on the val split (LiteRT files, kseg.evaluation). "
             f"Outlier xF: the busiest channel of 'features' times F, 'mixer' divided by F on it (float32 logits "
             f"differ by at most {max(o['float_max_diff'] for o in outliers.values()):.1e}). Predicting background "
             f"everywhere scores {background_only:.2f} mIoU here.", "",
             "| seed | model | QAT run | float32 mIoU | int8 mIoU (drop) | qat_int8 mIoU (drop) "
             "| int8 loss recovered |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['model']} | {r['qat_settings']} | {r['float32']:.2f} | {r['int8']:.2f} "
                     f"({r['int8_drop']:+.2f}) | {r['qat_int8']:.2f} ({r['qat_drop']:+.2f}) | {pct(r)} |")
    lost = [r for r in rows if r["int8_drop"] >= 1]
    half = [r for r in lost if r["recovered"] >= 0.5]
    lines += ["", "Drops are float32 minus the mode (points); recovered = (qat - int8) / (float32 - int8).", "",
              f"Where post-training int8 lost at least one point ({len(lost)} QAT runs), QAT recovered at least half "
              f"of it in {len(half)}" + (": " + "; ".join(f"seed {r['seed']} {r['model']}, {r['qat_settings']}"
                                                           for r in half) if half else "") + ".", "",
              f"`python benchmarks/qat_recovery.py` ({platform.machine()}, {os.cpu_count()} cores, "
              f"{time.perf_counter() - started:.0f} s in all)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "qat_recovery.json"), "w") as f:
        json.dump({"args": vars(args), "outliers": outliers, "int8_lost_1_point": len(lost),
                   "qat_recovered_half": len(half), "background_only_miou": background_only,
                   "train_seconds": train_seconds, "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, "qat_recovery.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
