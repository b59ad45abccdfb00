"""Video in, colour overlays out: every frame through a `kseg.Segmenter`, with a progress bar.

    result = kseg.runtime.video.segment(kseg.Segmenter("best_int8.tflite"), "clip.mp4", "clip_seg.mp4")
    result.frames, result.fps          # frames written, frames per second reached (decode + model + encode)

Reads and writes through imageio's ffmpeg plugin (`pip install "kseg[video]"`: imageio and imageio-ffmpeg,
which bundles an ffmpeg binary, so nothing else needs installing). The output is H.264 (yuv420p) at the
input's frame rate; that format needs even sides, so an odd side is rounded up by one pixel.
"""

import dataclasses
import os
import time

import numpy as np

from kseg import viz
from kseg.errors import DataError, KsegError, first_line

EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
FRAMES_PER_CALL = 8  # frames of one size run as one batch where the runtime takes batches


@dataclasses.dataclass
class VideoResult:
    frames: int
    size: tuple  # (height, width) of the frames
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


def is_video(path: str) -> bool:
    return str(path).lower().endswith(EXTENSIONS)


def _imageio():
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401 - the ffmpeg binary imageio's plugin runs
    except ImportError:
        raise KsegError('videos need imageio and imageio-ffmpeg: pip install "kseg[video]"') from None
    return imageio


def segment(segmenter, source: str, destination: str, progress: bool = True, alpha: float = 0.55) -> VideoResult:
    """Writes `destination`: the frames of the video `source` with their labels' colours blended over
    (`kseg.viz.overlay`), at the source's frame rate."""
    import keras

    imageio = _imageio()
    if not os.path.isfile(source):
        raise DataError(f"{source}: no such file")
    started = time.perf_counter()
    try:
        reader = imageio.get_reader(source, "ffmpeg")
    except Exception as error:  # imageio raises OSError, RuntimeError or its own types for unreadable files
        raise DataError(f"{source}: cannot read video ({first_line(error)})") from error
    meta = reader.get_meta_data()
    total = meta.get("nframes")
    if not isinstance(total, int) and meta.get("duration") and meta.get("fps"):
        total = round(meta["duration"] * meta["fps"])  # ffmpeg reports nframes as inf: the bar's expected length
    bar = keras.utils.Progbar(total if isinstance(total, int) else None, unit_name="frame") if progress else None
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    writer = imageio.get_writer(destination, "ffmpeg", fps=meta.get("fps") or 25, codec="libx264",
                                macro_block_size=2, ffmpeg_log_level="error")
    frames, size = 0, None
    try:
        batch = []
        for frame in reader:
            batch.append(np.asarray(frame)[..., :3])
            size = size or batch[0].shape[:2]
            if len(batch) == FRAMES_PER_CALL:
                frames += _write(segmenter, batch, writer, alpha, bar)
                batch = []
        if batch:
            frames += _write(segmenter, batch, writer, alpha, bar)
    finally:
        reader.close()
        writer.close()
    if bar and total is None:
        bar.update(frames, finalize=True)
    return VideoResult(frames, tuple(size or (0, 0)), time.perf_counter() - started)


def _write(segmenter, frames, writer, alpha, bar):
    for frame, labels in zip(frames, segmenter.predict_batch(frames)):
        writer.append_data(viz.overlay(frame, labels, alpha))
    if bar:
        bar.add(len(frames))
    return len(frames)
