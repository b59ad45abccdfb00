"""Peer: the plain Keras U-Net a typical user writes (no kseg), trained for a wall-clock budget.

    python benchmarks/peers/plain_keras_unet.py --data DIR --time-budget 120 --out OUT [--seed 0]

DIR holds train/{images,masks} and val/{images,masks} (PNG; masks are index PNGs, 255 = ignore), and optionally
classes.txt. Model: Keras 3 U-Net, 3 levels (16, 32, 64 filters, bottleneck 128), conv-BN-ReLU x2 per block,
softmax cross-entropy (255 ignored), Adam 1e-3, batch 4, random horizontal/vertical flips, random 256x256 crops,
inputs scaled to [0, 1], images read as RGB. A side shorter than 256 is taken whole and padded (image 0, mask 255)
up to a multiple of 8. All data is held in memory as numpy arrays.

Timing: the budget clock starts when the training data starts being read (after imports and model building);
validation runs about every 10% of the budget and its time counts toward the budget; one more evaluation follows
when the budget is spent. OUT/curve.json (rewritten after every evaluation) gets the points (seconds: budget clock
when that evaluation started; eval_s: how long it took), the final scores (seconds: when training stopped) and the
process's total wall time. Scores: one confusion matrix over all val pixels (255 ignored), evaluated at full image
size (padded to a multiple of 8, logits cropped back); miou = mean IoU over the classes present in labels or
predictions; dice_fg = Dice of class 1 for two classes, else the mean Dice over the present foreground classes.
Runs in kseg's venv (TensorFlow 2.21, Keras 3.15) but does not import kseg.
"""

import argparse
import json
import os
import time

PROCESS_START = time.time()

import keras
import numpy as np
from keras import layers
from PIL import Image


def read_split(root):
    files = sorted(f for f in os.listdir(os.path.join(root, "images")) if not f.startswith("."))
    images = [np.asarray(Image.open(os.path.join(root, "images", f)).convert("RGB")) for f in files]
    masks = [np.asarray(Image.open(os.path.join(root, "masks", os.path.splitext(f)[0] + ".png"))) for f in files]
    return images, masks


def count_classes(data):
    """From classes.txt when there is one, else 1 + the largest label in the masks (255 = ignore)."""
    classes_file = os.path.join(data, "classes.txt")
    if os.path.exists(classes_file):
        return len([line for line in open(classes_file).read().splitlines() if line.strip()])
    labels = [np.asarray(Image.open(os.path.join(data, split, "masks", f)))
              for split in ("train", "val") for f in os.listdir(os.path.join(data, split, "masks"))]
    return max(int(m[m != 255].max(initial=0)) for m in labels) + 1


def pad_to(x, h, w, value):
    return np.pad(x, [(0, h - x.shape[0]), (0, w - x.shape[1])] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def block(x, filters):
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    return x


def unet(num_classes, filters=16, levels=3):
    inputs = keras.Input((None, None, 3))
    x, skips = inputs, []
    for i in range(levels):
        x = block(x, filters * 2**i)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, filters * 2**levels)
    for i in reversed(range(levels)):
        x = layers.Conv2DTranspose(filters * 2**i, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skips[i]]), filters * 2**i)
    return keras.Model(inputs, layers.Conv2D(num_classes, 1)(x))  # logits


def scores(conf):
    tp = np.diag(conf).astype(float)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    present = (conf.sum(0) + conf.sum(1)) > 0
    iou = tp / np.maximum(tp + fp + fn, 1)
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    fg = [c for c in range(1, len(conf)) if present[c]]
    dice_fg = dice[1] if len(conf) == 2 else (dice[fg].mean() if fg else 0.0)
    return float(iou[present].mean()), float(dice_fg)


def evaluate(model, images, masks, num_classes):
    conf = np.zeros((num_classes, num_classes), np.int64)
    for image, mask in zip(images, masks):
        h, w = mask.shape
        x = pad_to(image, -(-h // 8) * 8, -(-w // 8) * 8, 0)[None].astype("float32") / 255.0
        pred = np.argmax(model.predict_on_batch(x)[0, :h, :w], -1)
        keep = mask != 255
        conf += np.bincount(mask[keep].astype(np.int64) * num_classes + pred[keep],
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    return scores(conf)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--time-budget", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    num_classes = count_classes(args.data)
    model = unet(num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))

    start = time.time()  # the budget clock: from here on everything counts (reading the data included)
    train_x, train_y = read_split(os.path.join(args.data, "train"))
    val_x, val_y = read_split(os.path.join(args.data, "val"))
    data_load_s = time.time() - start
    crop_h = min(256, min(m.shape[0] for m in train_y))
    crop_w = min(256, min(m.shape[1] for m in train_y))
    pad_h, pad_w = -(-crop_h // 8) * 8, -(-crop_w // 8) * 8

    def batch(size=4):
        xs, ys = [], []
        for i in rng.integers(0, len(train_x), size):
            img, msk = train_x[i], train_y[i]
            r = rng.integers(0, img.shape[0] - crop_h + 1)
            c = rng.integers(0, img.shape[1] - crop_w + 1)
            img, msk = img[r:r + crop_h, c:c + crop_w], msk[r:r + crop_h, c:c + crop_w]
            if rng.random() < 0.5:
                img, msk = img[:, ::-1], msk[:, ::-1]
            if rng.random() < 0.5:
                img, msk = img[::-1], msk[::-1]
            xs.append(pad_to(img, pad_h, pad_w, 0))
            ys.append(pad_to(msk, pad_h, pad_w, 255))
        return np.stack(xs).astype("float32") / 255.0, np.stack(ys)[..., None]

    curve = {"name": "plain_keras_unet", "budget_s": args.time_budget, "seed": args.seed, "num_classes": num_classes,
             "crop": [pad_h, pad_w], "data_load_s": round(data_load_s, 2), "points": []}

    def record(elapsed, step):
        t = time.time()
        miou, dice = evaluate(model, val_x, val_y, num_classes)
        curve["points"].append({"seconds": round(elapsed, 2), "step": step, "miou": miou, "dice_fg": dice,
                                "eval_s": round(time.time() - t, 2)})
        print(f"{elapsed:7.1f}s step {step:5d} miou {miou:.4f} dice_fg {dice:.4f}", flush=True)
        save()

    def save():
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "curve.json"), "w") as f:
            json.dump(curve, f, indent=1)

    step, every = 0, args.time_budget / 10
    next_eval = every
    while time.time() - start < args.time_budget:
        model.train_on_batch(*batch())
        step += 1
        elapsed = time.time() - start
        if next_eval <= elapsed < args.time_budget:
            record(elapsed, step)
            next_eval = (int((time.time() - start) / every) + 1) * every
    train_end = time.time() - start
    record(train_end, step)
    curve["final"] = dict(curve["points"][-1], seconds=round(train_end, 2), steps=step)
    curve["final_eval_end_s"] = round(time.time() - start, 2)
    curve["total_wall_s"] = round(time.time() - PROCESS_START, 2)
    save()
    print(json.dumps(curve["final"]), f"total wall {curve['total_wall_s']}s")


if __name__ == "__main__":
    main()
