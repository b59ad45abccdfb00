"""Tiled inference: overlapping windows, blending weights that fall off towards window edges, and a band-wise
accumulator whose memory is bounded by a band of windows, not by the picture.

    plan = kseg.runtime.tiling.plan((10_000, 10_000), tile=(512, 512), overlap=0.25)
    plan.rows, len(plan.windows)              # 512 accumulator rows for 676 windows
    plan.accumulator_bytes(channels=21)       # what the band costs: rows x width x (channels + 1) x 4 bytes

Windows are visited by their top row; once every window starting at row y has been added, rows above y are
final: their argmax is written into the uint8 label map and the band moves down. A 10,000x10,000 picture of a
21-class model tiled at 512 so holds 512 x 10,000 x 22 float32 values (450 MB) where a whole probability map
would take 8.4 GB; fewer classes or a shorter tile take proportionally less.
"""

import dataclasses
import functools
import math

import numpy as np

from kseg import settings
from kseg.errors import ArgumentError

FLOOR = 0.05  # the weight at a window's edge relative to its centre: > 0, so every covered pixel counts


def parse_tile(tile):
    """None, "auto", or (height, width) from None, "auto", an int, "HxW" / "N" text or a pair; ArgumentError else."""
    if tile is None or tile == "auto":
        return tile
    try:
        size = settings.size(tile) if isinstance(tile, str) else (tile, tile) if isinstance(tile, int) else tuple(tile)
        height, width = (int(s) for s in size)
    except (ValueError, TypeError, settings.argparse.ArgumentTypeError):
        raise ArgumentError(f"--tile takes auto, N or HxW (e.g. 512x512), got {tile!r}") from None
    if min(height, width) < 8:
        raise ArgumentError(f"--tile must be at least 8x8 pixels, got {height}x{width}")
    return height, width


def parse_overlap(overlap) -> float:
    """The share of a window that its neighbours overlap, in [0, 0.9]; ArgumentError else."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise ArgumentError(f"--overlap takes a share of the tile, like 0.25; got {overlap!r}") from None
    if not 0 <= value <= 0.9:
        raise ArgumentError(f"--overlap must lie between 0 and 0.9, got {value}")
    return value


@functools.lru_cache(maxsize=16)
def weights(height: int, width: int, floor: float = FLOOR) -> np.ndarray:
    """float32 (height, width) blending weights: a separable Hann-like window, 1 at the centre, `floor` (per
    axis) at the edges. Shared between calls: read it, do not write it."""
    def profile(n):
        return floor + (1 - floor) * np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    blend = np.outer(profile(height), profile(width)).astype(np.float32)
    blend.flags.writeable = False
    return blend


def positions(length: int, window: int, overlap: float) -> list:
    """Start offsets of windows of `window` pixels that cover `length`, neighbours overlapping by about
    `overlap` of a window, spread evenly with the last one ending at the edge."""
    if window >= length:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    count = math.ceil((length - window) / stride) + 1
    return np.linspace(0, length - window, count).round().astype(int).tolist()


@dataclasses.dataclass(frozen=True)
class Window:
    """A region of the picture (top, left, height, width) and how it is seen: at `scale`, `flipped` or not."""

    y: int
    x: int
    height: int
    width: int
    scale: float = 1.0
    flipped: bool = False


@dataclasses.dataclass
class Plan:
    """The windows over a picture of `size`, in the order they are added, and the accumulator rows they need."""

    size: tuple
    windows: list
    rows: int

    def accumulator_bytes(self, channels: int) -> int:
        """The band accumulator's float32 sums and weights."""
        return self.rows * self.size[1] * (channels + 1) * 4


def plan(size, tile=None, overlap=0.25, views=((1.0, False),)) -> Plan:
    """Windows over a picture of `size` (height, width) for each (scale, flipped) view: `tile / scale` pixels
    each (the whole picture when `tile` is None; never more than the picture), sorted by top row."""
    height, width = size
    found = []
    for order, (scale, flipped) in enumerate(views):
        rh = height if tile is None else min(height, max(1, round(tile[0] / scale)))
        rw = width if tile is None else min(width, max(1, round(tile[1] / scale)))
        found += [(y, order, x, Window(y, x, rh, rw, scale, flipped))
                  for y in positions(height, rh, overlap) for x in positions(width, rw, overlap)]
    found.sort(key=lambda item: item[:3])
    windows = [item[-1] for item in found]
    return Plan(tuple(size), windows, max(w.height for w in windows))


class BandAccumulator:
    """Sums weighted probabilities of windows added in top-row order over `rows` rows of the picture at a time,
    writing finished rows' labels (argmax, or probability > 0.5 for one channel) into `labels` and, with
    `keep_probabilities`, their averaged probabilities into `probabilities`."""

    def __init__(self, size, channels: int, rows: int, keep_probabilities: bool = False):
        self.height, self.width = size
        self.sums = np.zeros((rows, self.width, channels), np.float32)
        self.weight = np.zeros((rows, self.width), np.float32)
        self.top = 0  # the picture row held in the band's first row
        self.used = 0  # band rows that hold sums
        self.labels = np.zeros(size, np.uint8)
        self.probabilities = np.zeros((*size, channels), np.float32) if keep_probabilities else None

    def add(self, window: Window, probabilities: np.ndarray, blend: np.ndarray):
        """Adds (height, width, C) probabilities of `window` with (height, width) weights `blend`."""
        self._finish(window.y)
        top, bottom = window.y - self.top, window.y - self.top + window.height
        if bottom > len(self.sums):
            raise ValueError(f"a window of {window.height} rows does not fit a band of {len(self.sums)}")
        columns = slice(window.x, window.x + window.width)
        self.sums[top:bottom, columns] += probabilities * blend[..., None]
        self.weight[top:bottom, columns] += blend
        self.used = max(self.used, bottom)

    def finish(self):
        """(labels, probabilities or None) once every window has been added."""
        self._finish(self.height)
        return self.labels, self.probabilities

    def _finish(self, row):
        """Writes out the rows above picture row `row` and moves the band down to start there."""
        done = min(row, self.height) - self.top
        if done <= 0:
            return
        rows = slice(self.top, self.top + done)
        sums = self.sums[:done]
        if self.probabilities is not None or sums.shape[-1] == 1:
            averaged = sums / np.maximum(self.weight[:done, :, None], 1e-12)
            if self.probabilities is not None:
                self.probabilities[rows] = averaged
            self.labels[rows] = averaged[..., 0] > 0.5 if sums.shape[-1] == 1 else averaged.argmax(-1)
        else:  # the weights scale every class alike: no need to divide for the argmax
            self.labels[rows] = sums.argmax(-1)
        for start in range(0, max(self.used - done, 0), done):  # shift up in chunks that do not overlap
            stop = min(start + done, self.used - done)
            self.sums[start:stop] = self.sums[start + done:stop + done]
            self.weight[start:stop] = self.weight[start + done:stop + done]
        keep = max(self.used - done, 0)
        self.sums[keep:self.used] = 0
        self.weight[keep:self.used] = 0
        self.used, self.top = keep, self.top + done
