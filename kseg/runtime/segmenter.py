"""One way to segment pictures with any trained model: `kseg.Segmenter`.

    segmenter = kseg.Segmenter("best.keras", tile="auto", tta="flip")
    labels = segmenter.predict("photo.jpg")                # uint8 (H, W) at the picture's size
    labels, probabilities = segmenter.predict(pixels, probabilities=True)

It takes a Keras model, a `.keras` checkpoint, a model folder or `hf://` handle, or an exported `.tflite` /
`.onnx` file (through `kseg.runtime.predictor`), and pictures as paths, PIL images or arrays
(`kseg.runtime.images`). Without tiles or test-time augmentation a picture runs whole, exactly as
`kseg.runtime.predictor(...).labels` runs it; otherwise its windows (`kseg.runtime.tiling`) and views
(`kseg.runtime.tta`) are blended as probabilities band by band.
"""

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import tensorflow as tf

from kseg.errors import ArgumentError
from kseg.runtime import images as pictures
from kseg.runtime import tiling
from kseg.runtime.predictors import predictor

if TYPE_CHECKING:
    import keras
    from PIL import Image

    Picture = str | Image.Image | np.ndarray  # a path, a PIL image or an array
from kseg.runtime.tta import Augmentation
from kseg.runtime.tta import parse as parse_tta
from kseg.runtime.tta import probabilities as to_probabilities

AUTO_RATIO = 1.5  # tile="auto" tiles a picture this much larger than the trained size in either side


class Segmenter:
    """Labels (and probabilities) for pictures of any size from any trained model.

    Args:
        model: a `keras.Model`, a `.keras` path, a model folder / `hf://org/name`, or a `.tflite` / `.onnx` path.
        tile: None (the whole picture at once), (height, width) or "HxW" windows, or "auto": windows of the
            size the model was trained or exported at (the sidecar's training crop or input size) when the
            picture is over 1.5x that in either side. A fixed-input file runs each window at its input size.
        overlap: the share of a window its neighbours overlap (0 to 0.9).
        tta: None, "flip", "scales=0.75,1,1.25" or "flip,scales=..." (`kseg.runtime.tta`): probabilities
            averaged over the views. Scales on a fixed-input file need windows: without a tile they get tiles
            of its input size (resizing the whole picture to it would undo the scale).
        threads: LiteRT / onnxruntime threads.
        batch_size: windows per call where the runtime takes batches (Keras).

    Example:

        model = kseg.models.unet(3, filters=4, depth=2)
        segmenter = kseg.Segmenter(model, tile=(32, 32), tta="flip")
        segmenter.predict(np.zeros((50, 70, 3), np.uint8)).shape      # (50, 70)
    """

    def __init__(self, model: "keras.Model | str", tile: "str | tuple[int, int] | None" = None, overlap: float = 0.25,
                 tta: str | Augmentation | None = None, threads: int | None = None, batch_size: int = 8):
        self.tile = tiling.parse_tile(tile)  # settings are checked before the model loads
        self.overlap = tiling.parse_overlap(overlap)
        self.augment = parse_tta(tta)
        if int(batch_size) < 1:
            raise ArgumentError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.source = model if isinstance(model, str) else getattr(model, "name", "model")
        self.predictor = predictor(model, threads)
        if (self.tile or self.augment.active) and getattr(self.predictor, "outputs_labels", False):
            raise ArgumentError(f"{self.source} outputs labels, not logits: tiles and test-time augmentation "
                                "blend probabilities; export with --output logits")

    def window_size(self, size: tuple[int, int]) -> "tuple | None":
        """The windows a picture of `size` (height, width) is cut into, or None for the whole picture."""
        trained = self.predictor.trained_size
        tile = self.tile
        if tile == "auto":
            big = trained and (size[0] > AUTO_RATIO * trained[0] or size[1] > AUTO_RATIO * trained[1])
            tile = tuple(trained) if big and trained else None
        if tile is None and self.predictor.input_size and self.augment.scales != (1.0,):
            tile = self.predictor.input_size
        return tile

    def plan(self, size: tuple[int, int]) -> tiling.Plan:
        """The windows (and accumulator rows) for a picture of `size`: what `predict` will run, without running it."""
        return tiling.plan(size, self.window_size(size), self.overlap, self.augment.views())

    @overload
    def predict(self, image: "Picture", probabilities: Literal[False] = False) -> np.ndarray: ...

    @overload
    def predict(self, image: "Picture", probabilities: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, image: "Picture", probabilities: bool = False) -> "np.ndarray | tuple[np.ndarray, np.ndarray]":
        """uint8 (H, W) labels of one picture (path, PIL image or array) at its size; with `probabilities`,
        (labels, float32 (H, W, C) probabilities: softmax, or the sigmoid of a single channel)."""
        pixels = pictures.pixels(image)
        if not probabilities and not self.augment.active and self.window_size(pixels.shape[:2]) is None:
            return self.predictor.labels(pixels[None].astype(np.float32))[0]
        labels, probs = self._blend(pixels, probabilities)
        return (labels, probs) if probabilities else labels

    def predict_proba(self, image: "Picture") -> np.ndarray:
        """float32 (H, W, C) class probabilities of one picture."""
        return self.predict(image, probabilities=True)[1]

    def predict_batch(self, images: "Sequence[Picture]") -> list:
        """Labels of each picture; pictures of one size without tiles or views run as one batch."""
        arrays = [pictures.pixels(image) for image in images]
        sizes = {array.shape for array in arrays}
        if (len(sizes) == 1 and not self.augment.active
                and self.window_size(arrays[0].shape[:2]) is None):
            return list(self.predictor.labels(np.stack(arrays).astype(np.float32)))
        return [self.predict(array) for array in arrays]

    def predict_folder(self, folder: str, progress: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (path, labels) for every image in `folder` (sorted by name), with a progress bar."""
        import keras

        paths = pictures.in_folder(folder)
        bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
        for path in paths:
            yield path, self.predict(path)
            if bar:
                bar.add(1)

    def _blend(self, pixels, keep_probabilities):
        plan = self.plan(pixels.shape[:2])
        channels = self.predictor.num_classes
        band = tiling.BandAccumulator(pixels.shape[:2], channels, plan.rows, keep_probabilities)
        for batch in _batches(plan.windows, self.batch_size if self.predictor.batched else 1):
            for window, probs in zip(batch, self._run(pixels, batch)):
                band.add(window, probs, tiling.weights(window.height, window.width))
        return band.finish()

    def _run(self, pixels, batch):
        """Probabilities of each window of `batch` (one region size and scale) at its region's size."""
        first = batch[0]
        crops = np.stack([pixels[w.y:w.y + w.height, w.x:w.x + w.width] for w in batch]).astype(np.float32)
        flipped = np.array([w.flipped for w in batch])
        crops[flipped] = crops[flipped][:, :, ::-1]
        region = (first.height, first.width)
        # A fixed-input predictor resizes to its input itself; an any-size one sees the region at its scale.
        size = region if self.predictor.input_size else (max(1, round(first.height * first.scale)),
                                                         max(1, round(first.width * first.scale)))
        if size != region:
            crops = tf.image.resize(crops, size).numpy()
        logits = self.predictor.logits(crops)
        if size != region:
            logits = tf.image.resize(logits, region).numpy()
        if flipped.any():
            logits = np.array(logits)  # a framework's array can be read-only
            logits[flipped] = logits[flipped][:, :, ::-1]
        return to_probabilities(logits)


def _batches(windows, size):
    """Consecutive runs of windows with the same region size and scale, at most `size` each."""
    batch = []
    for window in windows:
        if batch and (len(batch) == size or (window.height, window.width, window.scale)
                      != (batch[0].height, batch[0].width, batch[0].scale)):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch

