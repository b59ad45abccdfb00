"""Latency and size of an artifact: `.tflite` (LiteRT with XNNPACK, a thread count) or `.keras`.

    kseg.bench.benchmark("model_int8.tflite", threads=2)  # {"mean_ms": ..., "p50_ms": ..., ...}
"""

import os
import time

import numpy as np

from kseg import files
from kseg.errors import KsegError


def time_calls(run, warmup, runs):
    """Milliseconds per call of `run` after `warmup` calls: mean, p50, p90, min over `runs` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    times = np.array(times)
    return {
        "mean_ms": float(times.mean()),
        "p50_ms": float(np.percentile(times, 50)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "runs": runs,
    }


def benchmark(path, threads=2, runs=30, warmup=5, input_size=None, seed=0):
    """Times single-image inference after `warmup` runs; returns latency statistics and the file size.

    `input_size` (height, width) is needed for a `.keras` model that takes any size (default 257x257).
    """
    from kseg import runtime

    if not os.path.exists(path):
        raise KsegError(f"{path}: no such file")
    rng = np.random.default_rng(seed)
    if path.endswith(".tflite"):
        runner = runtime.LiteRTModel(path, num_threads=threads)
        image = rng.uniform(0, 255, (*runner.input_size, 3)).astype(np.float32)
        run = lambda: runner.run(image)  # noqa: E731
        input_size = runner.input_size
    elif path.endswith(".keras"):
        _limit_threads(threads)
        predictor = runtime.KerasPredictor(path)
        fixed = tuple(predictor.model.input_shape[1:3])
        input_size = fixed if None not in fixed else tuple(input_size or (257, 257))
        image = rng.uniform(0, 255, (1, *input_size, 3)).astype(np.float32)
        run = lambda: predictor.logits(image)  # noqa: E731
    else:
        raise KsegError(f"{path}: expected a .tflite or .keras file")
    stats = time_calls(run, warmup, runs)
    return {"path": path, "threads": threads, "input_size": list(input_size), "size_bytes": files.size(path), **stats}


def _limit_threads(threads):
    """Best effort: TensorFlow accepts thread limits only before it has run anything."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
