"""Test-time augmentation: the views a picture is also seen in (horizontal flip, scales), and the probabilities
that are averaged over them (softmax, or sigmoid for a single-channel output).

    augment = kseg.runtime.tta.parse("flip,scales=0.75,1,1.25")
    augment.views()    # [(0.75, False), (0.75, True), (1.0, False), ...]: (scale, flipped)

With tiles, each scale gets its own grid of windows that cover `tile / scale` pixels of the picture, each
resized to the tile (as if the picture were resized by the scale, then tiled), and each window is also seen
flipped; without tiles the whole picture is resized by the scale. Windows of every view are blended into the
same band-wise accumulator (`kseg.runtime.tiling`), so memory stays bounded by the windows in flight.
"""

import dataclasses

import numpy as np

from kseg.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Horizontal flip or not, and the scales the picture is seen at (1.0: as it is)."""

    flip: bool = False
    scales: tuple = (1.0,)

    def views(self) -> list:
        """(scale, flipped) pairs: every scale as it is and, with `flip`, flipped too."""
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]

    @property
    def active(self) -> bool:
        return self.flip or self.scales != (1.0,)


NONE = Augmentation()


def parse(spec) -> Augmentation:
    """An Augmentation from None, an Augmentation, or text: "flip", "scales=0.75,1,1.25", "flip,scales=1,1.5"."""
    if spec is None or isinstance(spec, Augmentation):
        return spec or NONE
    text = str(spec).replace(" ", "")
    head, _, scales_text = text.partition("scales=")
    words = [word for word in head.split(",") if word]
    if any(word != "flip" for word in words) or (scales_text == "" and "scales=" in text) or not (words or scales_text):
        raise ArgumentError(f"--tta takes flip, scales=S1,S2,... or flip,scales=S1,S2,...; got {spec!r}")
    scales: tuple = (1.0,)
    if scales_text:
        try:
            scales = tuple(float(s) for s in scales_text.split(","))
        except ValueError:
            raise ArgumentError(f"--tta scales must be numbers, like scales=0.75,1,1.25; got {scales_text!r}") from None
        if not all(0.1 <= s <= 8 for s in scales):
            raise ArgumentError(f"--tta scales must lie between 0.1 and 8, got {scales_text!r}")
    return Augmentation(flip="flip" in words, scales=tuple(sorted(set(scales))))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, or the sigmoid of a single channel (the foreground's probability)."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[-1] == 1:
        return 1 / (1 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    shifted /= shifted.sum(-1, keepdims=True)
    return shifted
