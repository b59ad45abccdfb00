"""Latency and size of an artifact: `.tflite` (LiteRT with XNNPACK, a thread count) or `.keras`.

    kseg.bench.benchmark("model_int8.tflite", threads=2)  # {"mean_ms": ..., "p50_ms": ..., ...}
"""

import os
import time

import numpy as np

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
    if not os.path.exists(path):
        raise KsegError(f"{path}: no such file")
    rng = np.random.default_rng(seed)
    if path.endswith(".tflite"):
        from kseg.export import LiteRTModel

        runner = LiteRTModel(path, num_threads=threads)
        image = rng.uniform(0, 255, (*runner.input_size, 3)).astype(np.float32)
        run = lambda: runner.run(image)  # noqa: E731
        input_size = runner.input_size
    elif path.endswith(".keras"):
        import keras

        from kseg.evaluation import KerasPredictor

        _limit_threads(threads)
        model = keras.saving.load_model(path, compile=False)
        fixed = tuple(model.input_shape[1:3])
        input_size = fixed if None not in fixed else tuple(input_size or (257, 257))
        image = rng.uniform(0, 255, (1, *input_size, 3)).astype(np.float32)
        predict = KerasPredictor(model)._predict
        run = lambda: np.asarray(predict(image))  # noqa: E731
    else:
        raise KsegError(f"{path}: expected a .tflite or .keras file")
    stats = time_calls(run, warmup, runs)
    return {"path": path, "threads": threads, "input_size": list(input_size), "size_bytes": _size(path), **stats}


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def _limit_threads(threads):
    """Best effort: TensorFlow accepts thread limits only before it has run anything."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
