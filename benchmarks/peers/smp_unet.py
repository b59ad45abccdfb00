"""Peer: segmentation_models_pytorch Unet(resnet34, random weights) with a plain PyTorch loop, for a wall-clock budget.

    python benchmarks/peers/make_venvs.py smp         # once; prints SMP_PYTHON, the venv's interpreter
    SMP_PYTHON benchmarks/peers/smp_unet.py --data DIR --time-budget 120 --out OUT [--seed 0]

Its own venv (not kseg's; this is a benchmark peer, not a dependency), which make_venvs.py sets up in
~/.cache/kseg-bench/venvs/smp: torch==2.13.0 first, then segmentation-models-pytorch==0.6.0 under a constraint
file holding torch==2.13.0 (so pip keeps the CPU torch); resolved on the CPU machine it was written on to torch
2.13.0+cpu, segmentation_models_pytorch 0.6.0, timm 1.0.31, torchvision 0.28.0.

The only torchvision wheel that resolves (0.28.0) fails to import on CPU torch ("operator torchvision::nms does not
exist"); the workaround in smp_import.py (from FACTS.md) defines the missing operator schemas so the pure-Python
model code imports. No torchvision operator runs.

DIR holds train/{images,masks} and val/{images,masks} (PNG; masks are index PNGs, 255 = ignore), and optionally
classes.txt. Model: smp.Unet(encoder_name="resnet34", encoder_weights=None, classes=K); Adam 1e-3, batch 4, random
horizontal/vertical flips, cross-entropy (255 ignored), random 256x256 crops, inputs RGB scaled to [0, 1];
torch.set_num_threads(2). A side shorter than 256 is taken whole and padded (image 0, mask 255) up to a multiple
of 32, since SMP's Unet needs sides divisible by 32.

Timing: the budget clock starts when the training data starts being read (after imports and model building);
validation runs about every 10% of the budget and its time counts toward the budget; one more evaluation follows
when the budget is spent. OUT/curve.json (rewritten after every evaluation) gets the points (seconds: budget clock
when that evaluation started; eval_s: how long it took), the final scores (seconds: when training stopped) and the
process's total wall time. Scores: one confusion matrix over all val pixels (255 ignored), evaluated at full image
size (padded to a multiple of 32, logits cropped back); miou = mean IoU over the classes present in labels or
predictions; dice_fg = Dice of class 1 for two classes, else the mean Dice over the present foreground classes.
"""

import argparse
import json
import os
import time

PROCESS_START = time.time()

import numpy as np
import torch
from PIL import Image
from smp_import import smp  # noqa: E402  (segmentation_models_pytorch, with the torchvision workaround)


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


def scores(conf):
    tp = np.diag(conf).astype(float)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    present = (conf.sum(0) + conf.sum(1)) > 0
    iou = tp / np.maximum(tp + fp + fn, 1)
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    fg = [c for c in range(1, len(conf)) if present[c]]
    dice_fg = dice[1] if len(conf) == 2 else (dice[fg].mean() if fg else 0.0)
    return float(iou[present].mean()), float(dice_fg)


@torch.no_grad()
def evaluate(model, images, masks, num_classes):
    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    for image, mask in zip(images, masks):
        h, w = mask.shape
        x = pad_to(image, -(-h // 32) * 32, -(-w // 32) * 32, 0)
        x = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0
        pred = model(x)[0, :, :h, :w].argmax(0).numpy()
        keep = mask != 255
        conf += np.bincount(mask[keep].astype(np.int64) * num_classes + pred[keep],
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    model.train()
    return scores(conf)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--time-budget", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    num_classes = count_classes(args.data)
    model = smp.Unet(encoder_name="resnet34", encoder_weights=None, classes=num_classes)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    start = time.time()  # the budget clock: from here on everything counts (reading the data included)
    train_x, train_y = read_split(os.path.join(args.data, "train"))
    val_x, val_y = read_split(os.path.join(args.data, "val"))
    data_load_s = time.time() - start
    crop_h = min(256, min(m.shape[0] for m in train_y))
    crop_w = min(256, min(m.shape[1] for m in train_y))
    pad_h, pad_w = -(-crop_h // 32) * 32, -(-crop_w // 32) * 32

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
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.from_numpy(np.stack(ys).astype(np.int64))

    curve = {"name": "smp_unet_resnet34", "budget_s": args.time_budget, "seed": args.seed, "num_classes": num_classes,
             "crop": [pad_h, pad_w], "data_load_s": round(data_load_s, 2), "torch": torch.__version__,
             "smp": smp.__version__, "threads": torch.get_num_threads(), "points": []}

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
        x, y = batch()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
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
