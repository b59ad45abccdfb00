"""Run by tests/test_convert.py with the interpreter of KSEG_TORCH_PYTHON (a venv with torch, torchvision and
segmentation-models-pytorch 0.6.0): builds SMP's Unet or DeepLabV3Plus on one of its encoders with random weights
(`encoder_weights=None`; batch-norm statistics those of a batch of random images, then perturbed, and affine
parameters randomised, so a swapped mean and variance shows), saves its state dict with torch.save and its logits
on fixed [0, 255] images in an .npz (images and logits channels-last, as kseg takes and returns them); SMP takes
the images normalised as its ImageNet preprocessing does. DeepLabV3+ is built with SMP's auxiliary classification
head (`aux_params`), which the converter skips.

    python tests/smp_reference.py unet_resnet34 OUT_DIR 64x64 75x101
    python tests/smp_reference.py deeplabv3plus_mobilenet_v2 OUT_DIR 64x64 96x128
"""

import sys

import segmentation_models_pytorch as smp
import torch
from torch_reference import normalise, save_reference  # SMP's preprocessing of these encoders is torchvision's

DECODERS = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus}


def main(name, out_dir, *sizes):
    torch.manual_seed(0)
    decoder, encoder = name.split("_", 1)
    aux = {"aux_params": {"classes": 5}} if decoder == "deeplabv3plus" else {}
    model = DECODERS[decoder](encoder_name=encoder, encoder_weights=None, classes=5, **aux)
    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        # Statistics of the activations themselves first (a random weight's outputs are far from N(0, 1), and
        # randomised statistics alone leave DeepLabV3+'s logits nearly constant over the image), then perturbed.
        for module in batch_norms:
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: this one batch's statistics
        model.train()
        model(normalise(torch.rand(2, 3, 64, 64) * 255))
        for module in batch_norms:
            module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.5, 2.0))
            module.running_mean.add_(torch.randn_like(module.running_mean) * 0.5 * module.running_var.sqrt())
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.2)

    def run(x):
        logits = model(x)
        return logits[0] if isinstance(logits, tuple) else logits  # (masks, labels) with aux_params

    save_reference(model, run, name, out_dir, sizes)
    print(f"torch {torch.__version__}, segmentation_models_pytorch {smp.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:])
