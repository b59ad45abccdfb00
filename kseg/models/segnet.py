"""SegNet (Badrinarayanan, Kendall, Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", arXiv:1511.00561).

    model = kseg.models.segnet(num_classes=12, input_shape=(360, 480, 3))
    model(numpy.zeros((1, 360, 480, 3))).shape  # (1, 360, 480, 12)
"""

import keras
from keras import layers

from kseg.models import arguments, blocks, custom_layers
from kseg.models.backbones import VGG16_STAGES
from kseg.models.registry import register


@register("segnet", paper="Badrinarayanan et al. 2017, arXiv:1511.00561", tiny={"width": 0.125})
def segnet(num_classes: int, input_shape: tuple = (None, None, 3), width: float = 1.0,
           name: str = "segnet") -> keras.Model:
    """Builds SegNet: a VGG16-BN encoder whose five 2x2 max pools hand their pooling indices to a
    mirrored decoder, which unpools with them (sparse maps at the maxima) and densifies with convolutions.

    Args:
        num_classes: output channels (per-class logits).
        input_shape: (height, width, 3) RGB pixels in [0, 255]; any size, odd too (the output has the
            input's size: each unpooling crops to the size its encoder stage had before pooling).
        width: channel multiplier of the VGG16-BN layout (64, 128, 256, 512, 512); 1.0 is the paper's.

    Unpooling is `custom_layers.MaxUnpooling2D`, a builtins-only formulation of pooling indices (switch
    masks), so the model converts to LiteRT, float and full int8, without TensorFlow ops.

    Not for phone GPUs: the unpooling's ARG_MAX and 6-D window tensors are off TFLite's GPU delegate (4-D tensors
    at most), so on a phone the float file runs partly on the CPU (`kseg.deploy.gpu.check` names the ops;
    tests/test_gpu.py opts SegNet out for that reason).
    """
    arguments.common(num_classes, name)
    arguments.positive_number("width", width)
    channels = [max(int(filters * width), 4) for _, filters in VGG16_STAGES]
    pixels = blocks.pixel_input(input_shape)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(pixels)

    switches = []  # each stage's tensor before pooling: where its maxima were, for the decoder
    for stage, ((convs, _), filters) in enumerate(zip(VGG16_STAGES, channels), start=1):
        for i in range(1, convs + 1):
            x = blocks.conv_bn_act(x, filters, 3, name=f"block{stage}_conv{i}")
        before = x
        x = layers.MaxPooling2D(2, padding="same", name=f"block{stage}_pool")(x)
        switches.append(before)

    # The decoder mirrors the encoder; each stage's last convolution narrows to the next stage's width.
    for stage in reversed(range(1, len(VGG16_STAGES) + 1)):
        convs = VGG16_STAGES[stage - 1][0]
        before = switches[stage - 1]
        x = custom_layers.MaxUnpooling2D(name=f"decoder{stage}_unpool")([x, before])
        for i in range(convs, 0, -1):
            last = i == 1
            filters = channels[stage - 2] if last and stage > 1 else channels[stage - 1]
            x = blocks.conv_bn_act(x, filters, 3, name=f"decoder{stage}_conv{i}")
    logits = blocks.classifier(x, num_classes)
    return keras.Model(pixels, logits, name=name)
