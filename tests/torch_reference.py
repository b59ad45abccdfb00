"""Run by tests/test_convert.py with the interpreter of KSEG_TORCH_PYTHON (a venv with torch and torchvision):
builds a torchvision segmentation model (LR-ASPP, DeepLabV3, FCN) with random weights (batch-norm statistics and
affine parameters randomised too, so a swapped mean and variance shows), saves its state dict with torch.save and
its outputs on fixed [0, 255] images in an .npz (images and logits channels-last, as kseg takes and returns them).

    python tests/torch_reference.py lraspp_mobilenet_v3_large OUT_DIR 224x224 161x193
    python tests/torch_reference.py deeplabv3_resnet50 OUT_DIR 64x64 49x71
"""

import sys

import numpy as np
import torch
import torchvision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def main(name, out_dir, *sizes):
    torch.manual_seed(0)
    builder = getattr(torchvision.models.segmentation, name)
    # DeepLabV3 and FCN with their auxiliary heads, as torchvision's published weights have them (kseg skips them)
    aux = {} if "lraspp" in name else {"aux_loss": True}
    model = builder(weights=None, weights_backbone=None, num_classes=5, **aux)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    model.eval()
    torch.save(model.state_dict(), f"{out_dir}/{name}.pth")
    rng = np.random.default_rng(0)
    arrays = {}
    for i, size in enumerate(sizes):
        height, width = (int(s) for s in size.split("x"))
        image = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
        x = torch.from_numpy(image).permute(0, 3, 1, 2) / 255.0
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model(x)["out"].permute(0, 2, 3, 1).numpy()
        arrays[f"image{i}"], arrays[f"logits{i}"] = image, logits
    np.savez(f"{out_dir}/{name}.npz", **arrays)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:])
