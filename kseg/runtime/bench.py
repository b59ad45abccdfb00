"""Latency of an artifact as an engineer measures it: `.tflite` (LiteRT, XNNPACK), `.onnx` (onnxruntime) or `.keras`.

    stats = kseg.runtime.bench.benchmark("model_int8.tflite", threads=2)
    stats["mean_ms"]                  # one call as an app makes it: copy in, invoke, copy out
    stats["invoke"]["mean_ms"]        # the interpreter's invoke alone
    stats["input_copy"]["mean_ms"], stats["output_copy"]["mean_ms"]   # set_tensor, get_tensor
    stats["quantize"]["mean_ms"], stats["dequantize"]["mean_ms"]      # float <-> the file's integer types
    stats["init_ms"], stats["first_run_ms"], stats["peak_rss_growth_mb"]
    kseg.runtime.bench.benchmark("model_int8.tflite", ops=True)["ops"][:3]   # the op types that take the most time

Each timed call is split with one clock into its steps (`STEPS`): quantize (the float32 image to the
input's integer type, where it has one), input copy (`set_tensor`; onnxruntime: binding the array),
invoke, output copy (`get_tensor`) and dequantize (integer logits to float). `mean_ms` and the
percentiles are of the whole call, so `invoke` never exceeds it and the steps add up to it.
Initialisation is the time to load the file and allocate its tensors (LiteRT applies XNNPACK there);
the first run is timed apart, since XNNPACK and onnxruntime do one-off work in it. Memory is the
process's resident set (Linux `/proc/self/status`): `peak_rss_growth_mb` is the peak (VmHWM, reset
through `/proc/self/clear_refs` before loading) minus the resident size before loading, i.e. the most
the load, allocation and runs added; `rss_growth_mb` is what stays after them. Both are None where
`/proc` is missing. In one process a second model can reuse what an earlier one freed and skip the
runtime's start-up: `fresh_process=True` (`kseg bench --fresh-process`) measures as an app that starts
with the model. `ops=True` adds per-op-type times from the runtime's own profiler: LiteRT's (see
`kseg.runtime.profiler`) or onnxruntime's.
"""

import json
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
    return {**statistics(times), "runs": runs}


def statistics(times_ms):
    """Mean, p50, p90 and min of a list of milliseconds."""
    times = np.asarray(times_ms, np.float64)
    return {"mean_ms": float(times.mean()), "p50_ms": float(np.percentile(times, 50)),
            "p90_ms": float(np.percentile(times, 90)), "min_ms": float(times.min())}


STEPS = ("quantize", "input_copy", "invoke", "output_copy", "dequantize")  # one call, in order


def time_steps(runner, image, warmup, runs):
    """Times `runner` (a `kseg.runtime.ArtifactModel`) step by step on one image: returns the whole call's
    statistics (with `runs` and `first_run_ms`) and those of each of `STEPS`."""
    steps = {name: [] for name in STEPS}
    totals, first = [], None
    clock = time.perf_counter
    for index in range(warmup + runs):
        t0 = clock()
        x = runner.prepare(image)
        t1 = clock()
        runner.set_input(x)
        t2 = clock()
        runner.invoke()
        t3 = clock()
        y = runner.get_output()
        t4 = clock()
        runner.finish(y[0])
        t5 = clock()
        if index == 0:
            first = (t5 - t0) * 1000
        if index >= warmup:
            totals.append((t5 - t0) * 1000)
            for name, start, end in zip(STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                steps[name].append((end - start) * 1000)
    return {**statistics(totals), "runs": runs, "first_run_ms": first,
            **{name: statistics(times) for name, times in steps.items()}}


def benchmark(path, threads=2, runs=30, warmup=5, input_size=None, seed=0, ops=False, op_runs=None,
              fresh_process=False):
    """Times single-image inference after `warmup` runs; returns latency statistics, steps, memory and size.

    `input_size` (height, width) is needed for a `.keras` model that takes any size (default 257x257).
    `ops=True` adds `ops`: per op type, nodes, ms per run and share, slowest first, from `op_runs`
    (default `runs`) profiled runs in a second instance of the model (profiling slows it down).
    `fresh_process=True` measures in a new Python process, as an app that starts with this model: there
    the initialisation includes the runtime's one-off start-up and the memory is not memory that an
    earlier model in the process freed (in one process a second model can show a fraction of both).
    """
    if fresh_process:
        return _in_fresh_process(path=path, threads=threads, runs=runs, warmup=warmup, seed=seed, ops=ops,
                                 op_runs=op_runs, input_size=list(input_size) if input_size else None)
    from kseg import runtime

    if not os.path.exists(path):
        raise KsegError(f"{path}: no such file")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (*runtime.ARTIFACTS, ".keras"):
        raise KsegError(f"{path}: expected a .tflite, .onnx or .keras file")
    rng = np.random.default_rng(seed)
    memory = Memory()
    if extension == ".keras":
        _limit_threads(threads)
        start = time.perf_counter()
        predictor = runtime.KerasPredictor(path)
        init_ms = (time.perf_counter() - start) * 1000
        fixed = tuple(predictor.model.input_shape[1:3])
        input_size = fixed if None not in fixed else tuple(input_size or (257, 257))
        image = rng.uniform(0, 255, (1, *input_size, 3)).astype(np.float32)
        start = time.perf_counter()
        predictor.logits(image)  # traces the function
        first = (time.perf_counter() - start) * 1000
        stats = {**time_calls(lambda: predictor.logits(image), warmup, runs), "first_run_ms": first,
                 **dict.fromkeys(STEPS)}  # one compiled call: no steps to split
    else:
        start = time.perf_counter()
        runner = runtime.open_artifact(path, num_threads=threads)
        init_ms = (time.perf_counter() - start) * 1000
        input_size = runner.input_size
        image = rng.uniform(0, 255, (*input_size, 3)).astype(np.float32)
        stats = time_steps(runner, image, warmup, runs)
    result = {"path": path, "runtime": RUNTIMES[extension], "threads": threads, "input_size": list(input_size),
              "size_bytes": files.size(path), **stats, "init_ms": init_ms, **memory.growth()}
    if ops:
        if extension == ".keras":
            raise KsegError(f"{path}: per-op times are for .tflite and .onnx files")
        result["ops"] = op_times(path, threads, op_runs or runs)
        result["ops_source"] = OP_SOURCES[extension]
    return result


def _in_fresh_process(**arguments):
    import subprocess
    import sys

    code = ("import json, sys; from kseg.runtime import bench; "
            "print(json.dumps(bench.benchmark(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(arguments)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise KsegError(f"{arguments['path']}: benchmark process failed: {lines[-1] if lines else done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "fresh_process": True}


RUNTIMES = {".tflite": "ai_edge_litert (XNNPACK)", ".onnx": "onnxruntime (CPU)", ".keras": "Keras"}
OP_SOURCES = {".tflite": "LiteRT profiler (C API, kseg.runtime.profiler)", ".onnx": "onnxruntime profiler"}


def op_times(path, threads=2, runs=20, warmup=2):
    """Per op type of a `.tflite` or `.onnx` file: {"op", "nodes", "ms" (per run), "share"}, slowest first."""
    if path.lower().endswith(".onnx"):
        return onnx_op_times(path, threads, runs, warmup)
    from kseg.runtime import profiler

    return profiler.op_times(path, threads, runs, warmup)


def onnx_op_times(path, threads=2, runs=20, warmup=2):
    """onnxruntime's profile of `runs` runs (after `warmup`), summed by node op type."""
    from kseg import runtime

    runner = runtime.OnnxModel(path, num_threads=threads, profile=True)
    image = np.random.default_rng(0).uniform(0, 255, (*runner.input_size, 3)).astype(np.float32)
    for _ in range(warmup + runs):
        runner.run(image)
    profile = runner.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.remove(profile)
    os.rmdir(os.path.dirname(profile))  # OnnxModel's temporary folder for it
    return summarise_onnx_profile(events, runs)


def summarise_onnx_profile(events, runs):
    """Node kernel times of the last `runs` `model_run`s of an onnxruntime profile, summed by op type."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < runs:
        raise KsegError(f"the onnxruntime profile holds {len(starts)} runs, expected at least {runs}")
    begin = starts[-runs]
    total_us, nodes = {}, {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < begin:
            continue
        op = event.get("args", {}).get("op_name", "?")
        total_us[op] = total_us.get(op, 0) + event["dur"]
        nodes.setdefault(op, set()).add(event["name"])
    overall = max(sum(total_us.values()), 1)
    rows = [{"op": op, "nodes": len(nodes[op]), "ms": us / runs / 1000, "share": us / overall}
            for op, us in total_us.items()]
    return sorted(rows, key=lambda row: -row["ms"])


class Memory:
    """The process's resident memory from now on: `growth()` gives the peak and the lasting growth in MB.

    Linux only (`/proc/self/status`); the peak counter (VmHWM) is reset here through `/proc/self/clear_refs`
    when the kernel allows it, else the growth of the peak is only seen when it passes the earlier peak.
    """

    def __init__(self):
        self.reset = _reset_peak()
        self.before = _status_kb("VmRSS")

    def growth(self):
        now, peak = _status_kb("VmRSS"), _status_kb("VmHWM")
        if self.before is None or now is None or peak is None:
            return {"rss_growth_mb": None, "peak_rss_growth_mb": None, "peak_measured": None}
        return {"rss_growth_mb": (now - self.before) / 1024, "peak_rss_growth_mb": max(peak - self.before, 0) / 1024,
                "peak_measured": "VmHWM reset before loading" if self.reset else "VmHWM (not reset: lower bound)"}


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _limit_threads(threads):
    """Best effort: TensorFlow accepts thread limits only before it has run anything."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
