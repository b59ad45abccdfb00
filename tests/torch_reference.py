"""Run by tests/test_convert.py with the interpreter of KSEG_TORCH_PYTHON (a venv with torch and torchvision):
builds a torchvision segmentation model (LR-ASPP, DeepLabV3, FCN) or ImageNet classifier (ResNet, MobileNet) with
random weights (batch-norm statistics and affine parameters randomised too, so a swapped mean and variance shows),
saves its state dict with torch.save and its outputs on fixed [0, 255] images in an .npz (images and outputs
channels-last, as kseg takes and returns them): a segmentation model's logits; a classifier's deepest features as
torchvision's segmentation models take them (ResNets dilated to output stride 8, MobileNetV3-Large to 16, MobileNetV2
at 32 without its last 1x1 convolution).

    python tests/torch_reference.py lraspp_mobilenet_v3_large OUT_DIR 224x224 161x193
    python tests/torch_reference.py deeplabv3_resnet50 OUT_DIR 64x64 49x71
    python tests/torch_reference.py resnet50 OUT_DIR 64x64 49x71
"""

import sys

import numpy as np
import torch
import torchvision

MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, and SMP's preprocessing of its encoders
STD = (0.229, 0.224, 0.225)


def normalise(pixels):
    """[0, 255] RGB, channels first, normalised as the ImageNet-trained models take it."""
    return (pixels / 255.0 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def save_reference(model, run, name, out_dir, sizes):
    """Saves `model`'s state dict as OUT_DIR/NAME.pth and, in OUT_DIR/NAME.npz, fixed [0, 255] images of `sizes`
    ("HxW") with `run`'s outputs on them (normalised first), both channels-last."""
    model.eval()
    torch.save(model.state_dict(), f"{out_dir}/{name}.pth")
    rng = np.random.default_rng(0)
    arrays = {}
    for i, size in enumerate(sizes):
        height, width = (int(s) for s in size.split("x"))
        image = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
        with torch.no_grad():
            outputs = run(normalise(torch.from_numpy(image).permute(0, 3, 1, 2)))
        arrays[f"image{i}"], arrays[f"logits{i}"] = image, outputs.permute(0, 2, 3, 1).numpy()
    np.savez(f"{out_dir}/{name}.npz", **arrays)


def classifier(name):
    """(the ImageNet classifier whose state dict is saved, pixels -> the features kseg's backbone gives)."""
    builder = getattr(torchvision.models, name)
    model = builder(weights=None)
    if name.startswith("resnet"):
        dilated = builder(weights=None, replace_stride_with_dilation=[False, True, True])
        body = torch.nn.Sequential(*[getattr(dilated, part) for part in
                                     ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")])
    elif name == "mobilenet_v3_large":
        dilated = builder(weights=None, dilated=True)
        body = dilated.features
    else:
        dilated = model
        body = model.features[:-1]

    def run(x):
        dilated.load_state_dict(model.state_dict())  # the weights as main() randomised them
        dilated.eval()
        return body(x)

    return model, run


def main(name, out_dir, *sizes):
    torch.manual_seed(0)
    if hasattr(torchvision.models.segmentation, name):
        builder = getattr(torchvision.models.segmentation, name)
        # DeepLabV3 and FCN with their auxiliary heads, as torchvision's published weights have them (kseg skips them)
        aux = {} if "lraspp" in name else {"aux_loss": True}
        model = builder(weights=None, weights_backbone=None, num_classes=5, **aux)

        def run(x):
            return model(x)["out"]
    else:
        model, run = classifier(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    save_reference(model, run, name, out_dir, sizes)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:])
