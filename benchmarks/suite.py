"""kseg's speed, measured side by side: every registered architecture, against peers, against the machine.

    python benchmarks/suite.py --quick                      # tiny widths, one size, few runs (~4 min idle)
    python benchmarks/suite.py                              # "bench" widths at 256x256 (~20 min on 2 cores)
    python benchmarks/suite.py --models deeplabv3plus unet --sizes 256 512
    python benchmarks/suite.py --backend-subprocess jax     # Keras parts also under KERAS_BACKEND=jax

Writes benchmarks/results/suite.json, suite.md and suite.png (see benchmarks/README.md for the columns).

Each measurement group runs in its own process, so thread settings are set once, before anything runs:
- "tensorflow": the machine's fp32 matmul rate (numpy and TensorFlow, at the start and the end), the
  input pipeline, and per architecture and size: parameters, MACs, Keras latency, LiteRT float32 and
  int8 latency at 1 and 2 threads, training throughput;
- "peers" (TensorFlow): kseg's DeepLabV3+ against keras-hub's, when keras-hub is installed;
- "jax" (with --backend-subprocess jax): training throughput and Keras latency under JAX.
TensorFlow runs with intra-op threads = --threads (default 2) and inter-op threads = 1; numpy's BLAS
gets the same count; LiteRT threads are set per interpreter (1 and 2); JAX keeps its default (one
thread per core). The machine is shared and noisy: compare numbers within one run, as ratios.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
NUM_CLASSES = 21

# "Bench" widths: mobile-sized configurations that fit a full run in ~20 minutes on 2 cores. An
# architecture missing here runs at its registry `tiny` width (flagged "tiny" in the tables).
BENCH = {
    "deeplabv3plus": {},  # MobileNetV2 (alpha 1), output stride 16, ASPP/decoder 256: the paper's mobile model
    "deeplabv3": {"backbone": "mobilenetv2"},
    "fcn8s": {"backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "fcn16s": {"backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "fcn32s": {"backbone_kwargs": {"width": 0.25}, "fc_filters": 512},
    "hrnet": {"variant": "w18_small_v1"},
    "refinenet": {"backbone": "mobilenetv2", "filters": (128, 64, 64, 64)},
    "segnet": {"width": 0.25},
    "unet": {"filters": 16},
}

# Run sizes: (quick, full).
SETTINGS = {
    "quick": {"sizes": [128], "batch": 4, "train_steps": 3, "runs": 10, "calibration": 8, "peer_size": 256,
              "peer_batch": 4, "peer_train_steps": 2, "peer_runs": 5, "pipeline_images": 64, "pipeline_batches": 10,
              "matmul_reps": 5, "peer_backbones": ["mobilenetv2"]},
    "full": {"sizes": [256], "batch": 8, "train_steps": 5, "runs": 20, "calibration": 16, "peer_size": 256,
             "peer_batch": 8, "peer_train_steps": 3, "peer_runs": 20, "pipeline_images": 128,
             "pipeline_batches": 30, "matmul_reps": 10, "peer_backbones": ["mobilenetv2", "resnet50"]},
}


def log(message):
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:240] if text else ''}"


# Work items ---------------------------------------------------------------------------------------


def plan(args, settings):
    """The entries each worker measures: registered architectures, then peers."""
    import importlib.util

    sys.path.insert(0, os.path.dirname(HERE))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    models = args.models
    if not models:
        import kseg  # registry names only; the orchestrator runs nothing on TensorFlow

        models = kseg.models.names()
    entries = []
    for size in args.sizes or settings["sizes"]:
        for name in models:
            if args.quick or name not in BENCH:
                kwargs, width = {"tiny": True}, "tiny"
            else:
                kwargs, width = dict(BENCH[name]), "bench"
            entries.append({"group": "models", "label": name, "width": width, "size": [size, size],
                            "spec": {"kind": "kseg", "arch": name, "kwargs": kwargs},
                            "batch": settings["batch"], "train_steps": settings["train_steps"],
                            "runs": settings["runs"], "litert": True})
    has_hub = importlib.util.find_spec("keras_hub") is not None
    if not args.no_peers and (not args.models or "deeplabv3plus" in args.models):
        size = [settings["peer_size"]] * 2
        common = {"group": "peers", "size": size, "batch": settings["peer_batch"],
                  "train_steps": settings["peer_train_steps"], "runs": settings["peer_runs"], "litert": True}
        for backbone in settings["peer_backbones"]:
            kseg_kwargs = {} if backbone == "mobilenetv2" else {"backbone": backbone}
            entries.append({**common, "label": f"kseg DeepLabV3+ {backbone} OS16", "width": "full",
                            "spec": {"kind": "kseg", "arch": "deeplabv3plus", "kwargs": kseg_kwargs}})
            entries.append({**common, "label": f"kseg DeepLabV3+ {backbone} OS32", "width": "full",
                            "spec": {"kind": "kseg", "arch": "deeplabv3plus",
                                     "kwargs": {**kseg_kwargs, "output_stride": 32}}})
            if has_hub:
                entries.append({**common, "label": f"keras-hub DeepLabV3+ {backbone} OS32", "width": "full",
                                "spec": {"kind": "keras_hub", "backbone": backbone}})
    # A peer that is exactly a model run already planned (same spec, size and batch) is not run twice.
    for entry in entries:
        if entry["group"] == "peers":
            twin = next((e for e in entries if e["group"] == "models" and all(
                e[k] == entry[k] for k in ("spec", "size", "batch"))), None)
            if twin:
                entry["same_as"] = twin["label"]
    return entries, has_hub


def build(spec, input_shape=(None, None, 3)):
    import kseg

    if spec["kind"] == "kseg":
        kwargs = dict(spec["kwargs"])
        tiny = kwargs.pop("tiny", False)
        return kseg.models.get(spec["arch"], NUM_CLASSES, input_shape=input_shape, tiny=tiny, **kwargs)
    return build_keras_hub(spec["backbone"], input_shape)


def build_keras_hub(backbone, input_shape):
    """keras-hub's DeepLabV3+ from config with random weights (no preset, no download).

    keras-hub 0.32 has no MobileNetV2 backbone (its MobileNetBackbone is V3-style, without
    `pyramid_outputs`), so the encoder is `keras.applications.MobileNetV2` with `pyramid_outputs`
    tapped where kseg taps its own: stride 4 = block_3_expand_relu, stride 32 = block_16_project_BN.
    ResNet50 is keras-hub's own `ResNetBackbone` (v1, bottleneck blocks). keras-hub's encoder has no
    dilation, so ASPP runs at output stride 32 (`upsampling_size=8` brings it to stride 4), as in its
    `deeplab_v3_plus_resnet50_pascalvoc` preset.
    """
    import keras
    import keras_hub

    if backbone == "mobilenetv2":
        encoder = keras.applications.MobileNetV2(input_shape=input_shape, include_top=False, weights=None)
        encoder.pyramid_outputs = {"P2": encoder.get_layer("block_3_expand_relu").output,
                                   "P5": encoder.get_layer("block_16_project_BN").output}
    elif backbone == "resnet50":
        encoder = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
            use_pre_activation=False, image_shape=input_shape)
    else:
        raise ValueError(f"no keras-hub peer for backbone {backbone!r}")
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18],
        low_level_feature_key="P2", projection_filters=48, image_shape=input_shape)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=NUM_CLASSES)


# Measurements (run inside a worker) ---------------------------------------------------------------


def matmul_rate(backend, reps, n=2048):
    """fp32 n x n matmul GFLOP/s (2 n^3 FLOPs, i.e. n^3 MACs), median of `reps` after one warm-up."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if backend == "numpy":
        run = lambda: a @ b  # noqa: E731
    elif backend == "tensorflow":
        import tensorflow as tf

        ta, tb = tf.constant(a), tf.constant(b)
        run = lambda: tf.linalg.matmul(ta, tb).numpy()  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        ja, jb = jnp.asarray(a), jnp.asarray(b)
        matmul = jax.jit(jnp.matmul)
        run = lambda: matmul(ja, jb).block_until_ready()  # noqa: E731
    from kseg.runtime.bench import time_calls

    result = time_calls(run, 1, reps)
    flops = 2 * n**3
    return {"gflops_p50": flops / result["p50_ms"] / 1e6, "gflops_best": flops / result["min_ms"] / 1e6,
            "n": n, "reps": reps}


def inference_fn(model):
    """Batch-1 inference the way kseg runs it: a tf.function (no XLA) on TensorFlow, as
    `kseg.runtime.KerasPredictor`; a jitted `stateless_call` on JAX."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=False), jit_compile=False)
        return lambda x: call(x).numpy()
    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        call = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
        return lambda x: call(trainable, non_trainable, x).block_until_ready()
    return lambda x: keras.ops.convert_to_numpy(model(x, training=False))


def keras_latency(model, size, runs):
    import numpy as np

    image = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    predict = inference_fn(model)
    start = time.perf_counter()
    predict(image)
    first = time.perf_counter() - start
    from kseg.runtime.bench import time_calls

    return {**time_calls(lambda: predict(image), 2, runs), "first_call_s": first}


def training_throughput(model, size, batch, steps):
    """Images/s of `train_on_batch` (Adam, kseg.losses.CrossEntropy, compile defaults: jit_compile="auto",
    as kseg.training) on one fixed synthetic batch, after two warm-up steps."""
    import keras
    import numpy as np

    import kseg

    images, masks = kseg.data.generate(batch, tuple(size), seed=1)
    images = images.astype(np.float32)
    # metrics=[] explicitly: keras-hub's segmenter otherwise adds its own default ("auto") metrics.
    model.compile(keras.optimizers.Adam(1e-4), loss=kseg.losses.CrossEntropy(), metrics=[])
    # Built before the first step: otherwise the optimizer creates its variables inside the first
    # traced step and TensorFlow traces the step twice (see benchmarks/README.md).
    model.optimizer.build(model.trainable_variables)
    start = time.perf_counter()
    model.train_on_batch(images, masks)
    first = time.perf_counter() - start
    model.train_on_batch(images, masks)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(images, masks)
    elapsed = time.perf_counter() - start
    return {"images_per_s": batch * steps / elapsed, "batch": batch, "steps": steps, "first_step_s": first,
            "xla": bool(model.jit_compile), "loss": float(np.asarray(loss).reshape(-1)[0])}


def litert(model, size, calibration_count, runs, tmp, label, rounds=3):
    """LiteRT float32 and full-int8 files (kseg.deploy.litert.to_litert, builtins only): export time, size, latency.

    Latency comes from kseg.runtime.bench.benchmark, run in `rounds` interleaved rounds (float32 and int8, 1 and
    2 threads, in turn) so that a busy spell of the machine hits every configuration alike; each figure
    is the median of the rounds' medians.
    """
    import numpy as np

    import kseg
    from kseg.deploy import litert, modes
    from kseg.runtime import bench

    images, _ = kseg.data.generate(calibration_count, tuple(size), seed=3)  # realistic activation ranges
    calibration = [image[None].astype(np.float32) for image in images]
    results, paths = {}, {}
    stem = os.path.join(tmp, f"{label.replace(' ', '_').replace('+', 'p')}_{size[0]}")
    try:
        for mode in ("float32", "int8"):
            path, row = f"{stem}_{mode}.tflite", {}
            start = time.perf_counter()
            try:
                info = litert.to_litert(model, path, mode=mode, artifact=modes.Artifact(tuple(size)),
                                        calibration=calibration, num_calibration=calibration_count)
                row.update(export_s=time.perf_counter() - start, size_bytes=info["size_bytes"], ops=info["ops"])
                paths[mode] = path
            except Exception as error:  # noqa: BLE001 - record and go on: one model must not stop the suite
                row["error"] = one_line(error)
            results[mode] = row
        per_round = max(runs // rounds, 3)
        timings = {}
        for _ in range(rounds):
            for threads in (1, 2):
                for mode, path in paths.items():
                    result = bench.benchmark(path, threads=threads, runs=per_round, warmup=2)
                    timings.setdefault((mode, threads), []).append(result)
        for (mode, threads), rows in timings.items():
            results[mode][f"threads{threads}"] = {
                "p50_ms": float(np.median([r["p50_ms"] for r in rows])),
                "mean_ms": float(np.mean([r["mean_ms"] for r in rows])),
                "min_ms": float(min(r["min_ms"] for r in rows)),
                "runs": per_round * rounds,
            }
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.remove(path)
    return results


def pipeline_rate(settings, size, batch):
    """Images/s of kseg.data.pipeline(training=True) from a folder dataset and from the embedded synthetic one."""
    import kseg

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        kseg.data.write_folder(tmp, num_images=settings["pipeline_images"], size=tuple(size))
        write_s = time.perf_counter() - start
        sources = {"folder (PNG)": lambda: kseg.data.load(tmp, "train"),
                   "synthetic (in memory)": lambda: kseg.data.load("synthetic", "train", size=tuple(size))}
        for name, load in sources.items():
            try:
                start = time.perf_counter()
                split = load()
                load_s = time.perf_counter() - start
                batches = kseg.data.pipeline(split, batch, size=tuple(size), training=True, repeat=True)
                iterator = iter(batches)
                start = time.perf_counter()
                next(iterator)
                first_s = time.perf_counter() - start
                next(iterator)
                count = settings["pipeline_batches"]
                start = time.perf_counter()
                for _ in range(count):
                    next(iterator)
                rows[name] = {"images_per_s": count * batch / (time.perf_counter() - start), "load_s": load_s,
                              "first_batch_s": first_s, "images": split.length, "batch": batch,
                              "size": list(size)}
            except Exception as error:  # noqa: BLE001
                rows[name] = {"error": one_line(error)}
        rows["folder (PNG)"]["write_s"] = write_s
    return rows


def measure_entry(entry, settings, backend, tmp):
    from kseg import complexity

    size = tuple(entry["size"])
    row = {k: entry[k] for k in ("group", "label", "width", "size", "spec")}
    start = time.perf_counter()
    try:
        model = build(entry["spec"])
    except Exception as error:  # noqa: BLE001
        row["error"] = one_line(error)
        return row
    row["build_s"] = time.perf_counter() - start
    row["params"] = complexity.count_params(model)
    if backend == "tensorflow":  # MACs do not depend on the backend: only the TensorFlow worker counts them
        try:
            report = complexity.complexity(model, size)
            row["macs"] = report.macs
            row["macs_by_type"] = report.by_type
            row["top_layers"] = [{"name": c.name, "type": c.type, "macs": c.macs} for c in report.top(5)]
        except Exception as error:  # noqa: BLE001
            row["macs_error"] = one_line(error)
    if backend == "tensorflow":
        # The machine's rate right now, next to this model's measurements: "% peak" divides by it.
        row["matmul_gflops"] = matmul_rate("tensorflow", 3)["gflops_p50"]
    for key, measure in (
        ("keras", lambda: keras_latency(model, size, entry["runs"])),
        ("litert", lambda: litert(model, size, settings["calibration"], entry["runs"], tmp, entry["label"])
         if backend == "tensorflow" and entry["litert"] else None),
        ("train", lambda: training_throughput(model, size, entry["batch"], entry["train_steps"])),
    ):
        start = time.perf_counter()
        try:
            value = measure()
        except Exception as error:  # noqa: BLE001
            value = {"error": one_line(error)}
        if value is not None:
            row[key] = value
            log(f"  {entry['label']} {size[0]}: {key} in {time.perf_counter() - start:.1f} s")
    return row


def worker(args):
    """Runs one measurement group and writes its JSON to args.output."""
    threads = args.threads
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    with open(args.plan) as f:
        job = json.load(f)
    settings, entries = job["settings"], job["entries"]
    out = {"backend": backend, "group": args.worker, "threads": threads, "versions": versions(), "rows": []}

    def save():
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)

    if args.worker in ("tensorflow", "jax"):
        out["matmul_start"] = {b: matmul_rate(b, settings["matmul_reps"]) for b in ("numpy", backend)}
        rates = ", ".join(f"{b} {r['gflops_p50']:.0f}" for b, r in out["matmul_start"].items())
        log(f"{backend}: matmul GFLOP/s {rates}")
        save()
    if args.worker == "tensorflow" and job.get("pipeline"):
        out["pipeline"] = pipeline_rate(settings, job["pipeline"]["size"], job["pipeline"]["batch"])
        log("pipeline: " + ", ".join(f"{k} {v.get('images_per_s', 0):.0f} img/s" for k, v in out["pipeline"].items()))
        save()
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            if args.worker == "jax":
                entry = {**entry, "litert": False}
            log(f"{args.worker}: {entry['label']} at {entry['size'][0]}x{entry['size'][1]}")
            out["rows"].append(measure_entry(entry, settings, backend, tmp))
            keras.backend.clear_session()
            save()
    if args.worker in ("tensorflow", "jax"):
        out["matmul_end"] = {b: matmul_rate(b, settings["matmul_reps"]) for b in ("numpy", backend)}
    save()


def versions():
    import importlib.metadata

    found = {}
    for package in ("tensorflow", "keras", "keras-hub", "jax", "ai-edge-litert", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


# Orchestration and report -------------------------------------------------------------------------


def run_worker(name, backend, entries, settings, args, tmp, pipeline=None):
    plan_path, output = os.path.join(tmp, f"{name}_plan.json"), os.path.join(tmp, f"{name}.json")
    with open(plan_path, "w") as f:
        json.dump({"settings": settings, "entries": entries, "pipeline": pipeline}, f)
    threads = str(args.threads)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--plan", plan_path, "--output", output,
               "--threads", threads]
    start = time.perf_counter()
    code = subprocess.run(command, env=env).returncode
    result = {"rows": []}
    if os.path.exists(output):
        with open(output) as f:
            result = json.load(f)
    result["exit_code"], result["wall_s"] = code, time.perf_counter() - start
    log(f"worker {name} finished in {result['wall_s']:.0f} s (exit code {code})")
    return result


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def peak(result):
    """The backend's fp32 matmul GFLOP/s for this run: the mean of the start and end medians."""
    rates = [result[key][result["backend"]]["gflops_p50"] for key in ("matmul_start", "matmul_end") if key in result]
    return sum(rates) / len(rates) if rates else None


def share(macs, per_second, gflops, factor=1):
    """Achieved FLOP/s (2 FLOPs per MAC, times `factor`) as a percentage of the matmul rate."""
    if not macs or not per_second or not gflops:
        return None
    return 100 * factor * 2 * macs * per_second / (gflops * 1e9)


def fmt(value, spec=".1f", missing="-"):
    return missing if value is None else format(value, spec)


def get(row, *keys):
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row


def report(results, has_hub, args, wall_s):
    tf_result = results["tensorflow"]
    tf_peak = peak(tf_result)
    jax_result = results.get("jax")
    jax_rows = {(r["group"], r["label"], tuple(r["size"])): r for r in (jax_result or {}).get("rows", [])}
    lines = [
        f"# kseg benchmark suite{' (--quick)' if args.quick else ''}",
        "",
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {machine()}; "
        + ", ".join(f"{k} {v}" for k, v in tf_result.get("versions", {}).items())
        + f". Whole run {wall_s / 60:.1f} min. TensorFlow: {args.threads} intra-op threads, 1 inter-op; "
        "LiteRT: XNNPACK at 1 and 2 threads; numpy BLAS: "
        f"{args.threads} threads. Shared machine: read ratios within this run, not absolute numbers.",
        "",
        "## The machine",
        "",
        "fp32 2048x2048 matmul, GFLOP/s (median; 1 MAC = 2 FLOPs):",
        "",
        "| backend | start of run | end of run |",
        "|---|---:|---:|",
    ]
    for name, result in results.items():
        for backend in ("numpy", result.get("backend")):
            start = get(result, "matmul_start", backend, "gflops_p50")
            end = get(result, "matmul_end", backend, "gflops_p50")
            if start is not None:
                lines.append(f"| {backend} (in the {name} process) | {fmt(start, '.0f')} | {fmt(end, '.0f')} |")
    lines += ["", "\"% peak\" columns below divide achieved FLOP/s (2 per nominal MAC) by TensorFlow's fp32 "
              "matmul rate measured just before that model (the \"matmul GFLOP/s\" column; the run's mean, "
              f"{fmt(tf_peak, '.0f')} GFLOP/s, where missing). Training counts 3x the forward MACs (forward, "
              "input gradients, weight gradients)."]

    def rate(row):
        return row.get("matmul_gflops") or tf_peak

    def model_table(group, title):
        rows = [r for r in tf_result["rows"] if r["group"] == group]
        if not rows:
            return []
        with_jax = bool(jax_result)
        header = ("| model | width | size | params M | GMACs | train img/s | train % peak | Keras b1 ms | "
                  "Keras % peak | first step s | matmul GFLOP/s |")
        rule = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        if with_jax:
            header += " JAX train img/s | JAX b1 ms |"
            rule += "---:|---:|"
        out = ["", f"## {title}", "", header, rule]
        for r in rows:
            size = f"{r['size'][0]}x{r['size'][1]}"
            if "error" in r:
                out.append(f"| {r['label']} | {r['width']} | {size} | error: {r['error']} |")
                continue
            macs, ips, ms = r.get("macs"), get(r, "train", "images_per_s"), get(r, "keras", "p50_ms")
            cells = [r["label"], r["width"], size, fmt(r["params"] / 1e6, ".2f"), fmt(macs and macs / 1e9, ".3f"),
                     fmt(ips, ".2f") if ips else get(r, "train", "error") or "-",
                     fmt(share(macs, ips, rate(r), 3)), fmt(ms) if ms else get(r, "keras", "error") or "-",
                     fmt(share(macs, ms and 1000 / ms, rate(r))), fmt(get(r, "train", "first_step_s")),
                     fmt(rate(r), ".0f")]
            if with_jax:
                j = jax_rows.get((r["group"], r["label"], tuple(r["size"])), {})
                cells += [fmt(get(j, "train", "images_per_s"), ".2f"), fmt(get(j, "keras", "p50_ms"))]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        batch = rows[0].get("train", {}).get("batch")
        out += ["", f"Training at batch {batch}, Keras latency at batch 1 (median). Widths: \"bench\" = "
                "benchmarks/suite.py BENCH, \"tiny\" = the registry's tiny configuration."]
        return out

    def litert_table(group):
        rows = [r for r in tf_result["rows"] if r["group"] == group and "litert" in r]
        if not rows:
            return []
        out = ["", "| model | size | fp32 MB | int8 MB | fp32 ms 1t | fp32 ms 2t | int8 ms 1t | int8 ms 2t | "
               "int8 speedup 1t / 2t | fp32 % peak 2t | export s fp32 / int8 |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            f32, i8 = r["litert"].get("float32", {}), r["litert"].get("int8", {})
            if "error" in f32 and "error" in i8 and f32["error"] == i8["error"]:
                out.append(f"| {r['label']} | {r['size'][0]} | export failed: {f32['error']} |")
                continue
            cells = [r["label"], f"{r['size'][0]}x{r['size'][1]}",
                     fmt(f32.get("size_bytes") and f32["size_bytes"] / 1e6, ".2f", f32.get("error", "-")),
                     fmt(i8.get("size_bytes") and i8["size_bytes"] / 1e6, ".2f", i8.get("error", "-"))]
            for mode in (f32, i8):
                cells += [fmt(get(mode, f"threads{t}", "p50_ms")) for t in (1, 2)]
            speed = []
            for t in (1, 2):
                a, b = get(f32, f"threads{t}", "p50_ms"), get(i8, f"threads{t}", "p50_ms")
                speed.append(a / b if a and b else None)
            cells.append(f"{fmt(speed[0], '.2f')}x / {fmt(speed[1], '.2f')}x")
            ms2 = get(f32, "threads2", "p50_ms")
            cells.append(fmt(share(r.get("macs"), ms2 and 1000 / ms2, rate(r))))
            cells.append(f"{fmt(f32.get('export_s'), '.0f')} / {fmt(i8.get('export_s'), '.0f')}")
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        return out

    lines += model_table("models", "Every registered architecture (Keras, TensorFlow backend)")
    lines += ["", "### LiteRT (builtins only, kseg.deploy.litert.to_litert; full int8 with uint8 input/output)"]
    lines += litert_table("models")

    peers = [r for r in tf_result["rows"] if r["group"] == "peers"]
    if peers:
        lines += model_table("peers", "Against keras-hub: DeepLabV3+ at the same backbone and input size")
        lines += ["", "### LiteRT of the same models"] + litert_table("peers")
        lines += ["", "### Targets", ""] + targets(peers, jax_rows)
    elif not has_hub:
        lines += ["", "keras-hub is not installed (`pip install keras-hub`): no side-by-side comparison."]

    pipeline = tf_result.get("pipeline")
    if pipeline:
        reference = next((r for r in tf_result["rows"] if r["group"] == "models" and r["spec"].get("arch") ==
                          "deeplabv3plus" and get(r, "train", "images_per_s")), None)
        ref_ips = get(reference, "train", "images_per_s")
        lines += ["", "## Input pipeline alone", "",
                  "kseg.data.pipeline(split, training=True): random scale, pad, crop, flip, colour jitter, batch.", "",
                  "| source | images | load s | first batch s | images/s | x deeplabv3plus training |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, row in pipeline.items():
            if "error" in row:
                lines.append(f"| {name} | error: {row['error']} |")
                continue
            ratio = row["images_per_s"] / ref_ips if ref_ips else None
            lines.append(f"| {name} | {row['images']} | {fmt(row['load_s'])} | {fmt(row['first_batch_s'])} | "
                         f"{fmt(row['images_per_s'], '.0f')} | {fmt(ratio, '.0f')} |")
        row = next(iter(pipeline.values()))
        lines += ["", f"Crops {row.get('size', ['?'])[0]}px, batch {row.get('batch')}; the last column divides by "
                  f"deeplabv3plus's training images/s above ({fmt(ref_ips, '.2f')}): above 1, the pipeline keeps up."]
    return "\n".join(lines) + "\n"


def targets(peers, jax_rows):
    by = {r["label"]: r for r in peers}
    out = []
    for backbone, stride in (("mobilenetv2", 16), ("mobilenetv2", 32), ("resnet50", 16), ("resnet50", 32)):
        ours = by.get(f"kseg DeepLabV3+ {backbone} OS{stride}")
        theirs = by.get(f"keras-hub DeepLabV3+ {backbone} OS32")
        if not ours:
            continue
        if theirs:
            for what, key, better in (("Keras inference (b1 ms)", ("keras", "p50_ms"), "lower"),
                                      ("training (img/s)", ("train", "images_per_s"), "higher")):
                a, b = get(ours, *key), get(theirs, *key)
                if a and b:
                    ok = a <= b if better == "lower" else a >= b
                    ratio = b / a if better == "lower" else a / b
                    out.append(f"- {backbone}, {what}: kseg OS{stride} {a:.2f} vs keras-hub OS32 {b:.2f}: kseg "
                               f"{ratio:.2f}x as fast — {'MET' if ok else 'NOT MET'} (target: at least as fast).")
                else:
                    reason = get(theirs, key[0], "error") or get(ours, key[0], "error") or "not measured"
                    out.append(f"- {backbone}, {what}: not compared ({reason}).")
            if stride == 16:
                for mode in ("float32", "int8"):
                    row = theirs.get("litert", {}).get(mode, {})
                    state = row.get("error") or (f"works, exported in {fmt(row.get('export_s'), '.0f')} s, "
                                                 f"{fmt(get(row, 'threads2', 'p50_ms'))} ms at 2 threads")
                    out.append(f"- keras-hub {backbone} LiteRT {mode} via kseg.deploy.litert.to_litert: {state}.")
        f32, i8 = get(ours, "litert", "float32"), get(ours, "litert", "int8")
        for threads in (1, 2):
            a, b = get(f32, f"threads{threads}", "p50_ms"), get(i8, f"threads{threads}", "p50_ms")
            if a and b:
                out.append(f"- kseg {backbone} OS{stride} int8 vs float32 LiteRT at {threads} thread(s): "
                           f"{a / b:.2f}x faster — "
                           f"{'MET' if a / b >= 4 else 'NOT MET'} (target: at least 4x).")
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["tensorflow"]["rows"] if r.get("macs")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    markers = {"Keras b1": ("keras", "p50_ms", "o"), "LiteRT fp32 2t": ("litert", "float32", "s"),
               "LiteRT int8 2t": ("litert", "int8", "^")}
    for name, (key, sub, marker) in markers.items():
        xs, ys, labels = [], [], []
        for r in rows:
            ms = get(r, key, sub) if key == "keras" else get(r, key, sub, "threads2", "p50_ms")
            if ms:
                xs.append(r["macs"] / 1e9)
                ys.append(ms)
                labels.append(f"{r['label']} {r['size'][0]}")
        left.scatter(xs, ys, marker=marker, label=name)
        if key == "keras":
            for x, y, label in zip(xs, ys, labels):
                left.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("GMACs per image (nominal)")
    left.set_ylabel("latency, ms (median, batch 1)")
    left.set_title("latency vs MACs")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)

    train = [(f"{r['label']} {r['size'][0]}", get(r, "train", "images_per_s")) for r in results["tensorflow"]["rows"]]
    train = [(label, ips) for label, ips in train if ips]
    jax_rows = {f"{r['label']} {r['size'][0]}": get(r, "train", "images_per_s")
                for r in results.get("jax", {}).get("rows", [])}
    positions = range(len(train))
    width = 0.4 if jax_rows else 0.8
    right.barh([p - (width / 2 if jax_rows else 0) for p in positions], [ips for _, ips in train], height=width,
               label="TensorFlow")
    if jax_rows:
        right.barh([p + width / 2 for p in positions], [jax_rows.get(label) or 0 for label, _ in train],
                   height=width, label="JAX")
        right.legend(fontsize=8)
    right.set_yticks(list(positions), [label for label, _ in train], fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("training images/s (log scale)")
    right.set_title("training throughput")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny widths, one small size, few runs")
    parser.add_argument("--models", nargs="+", help="architectures (default: every registered one)")
    parser.add_argument("--sizes", nargs="+", type=int, help="square input sizes (default 256; 128 with --quick)")
    parser.add_argument("--backend-subprocess", choices=["jax"], help="also run the Keras parts under this backend")
    parser.add_argument("--no-peers", action="store_true", help="skip the keras-hub comparison")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op and BLAS threads (default 2)")
    parser.add_argument("--out", default=RESULTS, help="folder for suite.json, suite.md, suite.png")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    start = time.perf_counter()
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    entries, has_hub = plan(args, settings)
    sizes = sorted({e["size"][0] for e in entries if e["group"] == "models"}) or settings["sizes"]
    pipeline = {"size": [sizes[0]] * 2, "batch": settings["batch"]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = [e for e in entries if e["group"] == "models"]
        peers = [e for e in entries if e["group"] == "peers" and "same_as" not in e]
        log(f"{len(models)} architecture runs, {len(peers)} peer runs; keras-hub {'found' if has_hub else 'absent'}")
        results["tensorflow"] = run_worker("tensorflow", "tensorflow", models, settings, args, tmp, pipeline)
        if peers:
            peer_result = run_worker("peers", "tensorflow", peers, settings, args, tmp)
            results["peers_process"] = {k: v for k, v in peer_result.items() if k != "rows"}
        else:
            peer_result = {"rows": []}
        measured = {(r["label"], tuple(r["size"])): r for r in peer_result.get("rows", [])}
        for entry in (e for e in entries if e["group"] == "peers"):
            twin = next((r for r in results["tensorflow"]["rows"]
                         if r["label"] == entry.get("same_as") and r["size"] == entry["size"]), None)
            if twin:
                measured[(entry["label"], tuple(entry["size"]))] = {**twin, "group": "peers", "label": entry["label"],
                                                                   "width": entry["width"], "same_as": twin["label"]}
        results["tensorflow"]["rows"] += [measured[(e["label"], tuple(e["size"]))]
                                          for e in entries if e["group"] == "peers"
                                          if (e["label"], tuple(e["size"])) in measured]
        if args.backend_subprocess:
            other = args.backend_subprocess
            results[other] = run_worker(other, other, [e for e in entries if "same_as" not in e], settings, args, tmp)
            rows = {(r["label"], tuple(r["size"])): r for r in results[other]["rows"]}
            for entry in (e for e in entries if "same_as" in e):
                twin = rows.get((entry["same_as"], tuple(entry["size"])))
                if twin:
                    results[other]["rows"].append({**twin, "group": "peers", "label": entry["label"]})
    results["has_hub"] = has_hub
    wall_s = time.perf_counter() - start
    results["run"] = {"quick": args.quick, "argv": sys.argv[1:], "settings": settings, "wall_s": wall_s,
                      "machine": machine(), "threads": args.threads}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = report({k: v for k, v in results.items() if k in ("tensorflow", "jax")}, has_hub, args, wall_s)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(table)
    try:
        plot(results, os.path.join(args.out, "suite.png"))
    except Exception as error:  # noqa: BLE001 - a plot must not lose the tables
        log(f"plot failed: {one_line(error)}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
