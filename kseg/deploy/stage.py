"""The export stage: a trained model in, evaluated and timed LiteRT or ONNX artifacts out, each with a manifest entry.

    results = kseg.deploy.stage.export_checkpoint("runs/kseg/best.keras", "artifacts", ["float32", "int8"],
                                                  train=train, val=val, threads=(2,))
    kseg.deploy.stage.write_manifest("artifacts", results)     # manifest.json and report.md

`export_artifact` is the one path from a model to an artifact: convert in any mode of
`kseg.deploy.modes.MODES` (fine-tuning first for QAT and pruning), then evaluate on `val`, time at each
thread count and compare with a reference artifact, each when asked. `kseg export`,
`kseg quantize-study`, `export/run.py` and `kseg demo` all produce their artifacts through it, and
name them alike: `<stem>_<mode>.tflite` (`<stem>_onnx.onnx` for the ONNX mode), with a JSON sidecar.
"""

import dataclasses
import os

import numpy as np

from kseg import files, provenance, report, runtime
from kseg.deploy import gpu, litert, modes
from kseg.errors import KsegError
from kseg.runtime import bench, evaluation, profiler
from kseg.runtime.evaluation import EvaluationResult


def convert(model, path: str, *, mode: str, artifact: modes.Artifact, origin: modes.Origin | None = None,
            train=None, settings: modes.ExportSettings | None = None) -> dict:
    """Writes `model` in any export mode (a LiteRT file, or an ONNX file for "onnx"); returns its sidecar dict.

    `train` (a `kseg.data.Split`) calibrates int8 ranges and fine-tunes the QAT and pruned modes, as
    `settings` (a `kseg.deploy.modes.ExportSettings`) says; the ai-edge-quantizer modes (int4, mixed, and
    qat_int4 after `kseg.deploy.compression.int4_aware_training`) are `kseg.deploy.quantizer`'s, and mixed
    chooses its float ops on those calibration images. `origin` defaults to `Origin.of(model)`, with the
    training split's class names where it knows none.
    """
    spec = modes.get(mode)
    settings = settings or modes.ExportSettings()
    if spec.needs_data and train is None:
        need = "fine-tunes the model" if spec.fine_tune else "calibrates its ranges"
        raise KsegError(f"{mode} {need}: it needs training data")
    origin = (origin or modes.Origin.of(model)).with_classes(train.class_names if train is not None else None)
    if spec.format == "onnx":
        from kseg.deploy import onnx_export

        return onnx_export.to_onnx(model, path, artifact=artifact, origin=origin)
    learning_rate = settings.qat_learning_rate
    if spec.fine_tune == "qat" and learning_rate is None:
        learning_rate = modes.QAT_LEARNING_RATE[spec.quantization]
    if spec.converter == "aeq":
        from kseg.deploy import quantizer

        extras = None
        if spec.fine_tune == "qat":
            from kseg.deploy.compression import qat_int4

            model, tuning = qat_int4.int4_aware_training(model, train, input_size=artifact.input_size,
                                                         learning_rate=learning_rate, settings=settings,
                                                         verbose=settings.verbose)
            extras = {"training": "qat", "fine_tune": tuning}
        return quantizer.to_litert(model, path, mode=spec.quantization, artifact=artifact, calibration=train,
                                   origin=origin, settings=settings, progress=bool(settings.verbose), extras=extras)
    if spec.fine_tune is None:
        return litert.to_litert(model, path, mode=spec.quantization, artifact=artifact, origin=origin,
                                calibration=train, num_calibration=settings.num_calibration)
    from kseg.deploy import compression

    tuning = dict(train_split=train, artifact=artifact, origin=origin, batch_size=settings.batch_size,
                  num_calibration=settings.num_calibration, verbose=settings.verbose)
    if spec.fine_tune == "qat":  # Keras 3 fake-quant fine-tune, then the int8 mode (no tfmot): keeps the better file
        return compression.int8_qat_to_litert(model, path, train_split=train, artifact=artifact, origin=origin,
                                              settings=settings, learning_rate=learning_rate)
    return compression.prune_to_litert(model, path, sparsity=settings.sparsity, mode=spec.quantization,
                                       epochs=settings.prune_epochs, **tuning)


@dataclasses.dataclass
class StageResult:
    """One artifact: its sidecar, and what the stage measured of it (None where not asked)."""

    mode: str
    path: str
    info: dict  # the sidecar
    evaluation: EvaluationResult | None = None
    latency: dict = dataclasses.field(default_factory=dict)  # str(threads) -> kseg.runtime.bench.benchmark statistics
    agreement: float | None = None  # share of pixels whose label agrees with the reference artifact
    source: str | None = None

    @property
    def miou(self):
        return None if self.evaluation is None else self.evaluation.scores["miou"]

    def entry(self):
        """The manifest entry: plain JSON."""
        info = self.info
        entry = {"mode": self.mode, "artifact": os.path.basename(self.path), "source": self.source,
                 "size_bytes": info["size_bytes"], "gzip_bytes": info["gzip_bytes"],
                 "miou": self.miou, "latency_ms": {t: s["mean_ms"] for t, s in self.latency.items()},
                 "agreement": self.agreement, "input": info["input"], "output": info["output"], "ops": info["ops"]}
        entry.update({key: info[key] for key in ("training", "sparsity") if info.get(key) is not None})
        if info.get("gpu"):
            entry["gpu_compatible"] = info["gpu"]["compatible"]
        if info.get("quantizer"):  # ai-edge-quantizer modes: what stayed in float and why (the recipe: sidecar)
            entry["quantizer"] = {key: value for key, value in info["quantizer"].items()
                                  if key not in ("recipe", "ranking")}
        return entry

    def summary(self):
        """One line for the console: size, types, then mIoU, agreement and latency when measured; for float
        files a second line, the GPU delegate verdict (`kseg.deploy.gpu.verdict`)."""
        info = self.info
        parts = [f"{info['size_bytes'] / 1e6:.2f} MB"]
        if info.get("sparsity") is not None:
            parts.append(f"sparsity {info['sparsity']:.2f}, gzip {info['gzip_bytes'] / 1e6:.2f} MB")
        parts.append(f"input {info['input']['dtype']}, output {info['output']['kind']} {info['output']['dtype']}")
        search = info.get("quantizer", {}).get("selection")
        if search:
            parts.append(f"{len(info['quantizer']['promoted'])} ops in {info['quantizer']['promote']} "
                         f"(drop {search['drop']:.2f} on {search['images']} calibration images, int8 alone "
                         f"{100 * (search['float32_miou'] - search['int8_miou']):.2f})"
                         + ("" if search["met"] else f": over --max-drop {info['quantizer']['max_drop']} even so"))
        if self.miou is not None:
            parts.append(f"mIoU {100 * self.miou:.2f}")
        if self.agreement is not None:
            parts.append(f"agreement {100 * self.agreement:.2f}%")
        parts += [f"{stats['mean_ms']:.1f} ms @{threads}" for threads, stats in self.latency.items()]
        line = f"{self.path}: " + ", ".join(parts)
        if info.get("gpu"):  # float files: kseg.deploy.gpu's verdict on a line of its own
            line += "\n    " + gpu.verdict(info["gpu"])
        return line


def export_artifact(model, path: str, *, mode: str, artifact: modes.Artifact, origin: modes.Origin | None = None,
                    train=None, val=None, settings: modes.ExportSettings | None = None, threads=(), runs: int = 20,
                    reference: str | None = None) -> "StageResult":
    """Export -> evaluate -> time: writes `path` in `mode` (`convert`) and returns a StageResult.

    Evaluates on `val` when given, times at each of `threads` (`runs` timed calls each) and measures
    agreement with the `reference` artifact (a path) on `val` when both are given.
    """
    info = convert(model, path, mode=mode, artifact=artifact, origin=origin, train=train, settings=settings)
    result = StageResult(mode, path, info, source=info["source"])
    if val is not None:
        result.evaluation = evaluation.evaluate(path, val, progress=False)
        if reference is not None:
            result.agreement = 1.0 if reference == path else evaluation.agreement(reference, path, val)
    for count in threads:
        result.latency[str(count)] = bench.benchmark(path, threads=count, runs=runs)
    return result


def artifact_stem(checkpoint, with_folder=False):
    """"best" for "runs/a/best.keras"; with_folder: "a_best" (checkpoints of several runs in one folder)."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    if with_folder:
        stem = os.path.basename(os.path.dirname(os.path.abspath(checkpoint))) + "_" + stem
    return stem


def input_size_of(model, input_size=None, origin=None):
    """The export input size: the one given, else the model's fixed size, else the training crop of its run."""
    if input_size:
        return tuple(int(s) for s in input_size)
    fixed = tuple(model.input_shape[1:3])
    if None not in fixed:
        return fixed
    crop = (origin or {}).get("crop_size")
    if crop:
        return tuple(int(s) for s in crop)
    raise KsegError(f"{model.name} takes any size: give the exported model's input size (--input-size)")


def export_checkpoint(checkpoint, out_dir: str, mode_names, *, input_size=None, output: str = "logits",
                      io_dtype: str = "uint8", train=None, val=None, settings: modes.ExportSettings | None = None,
                      threads=(), runs: int = 20, stem: str | None = None, agreement: bool = False,
                      progress: bool = True, source: str | None = None) -> list:
    """Every mode of one checkpoint (a `.keras` path or a Keras model) through `export_artifact`.

    Files are `out_dir/<stem>_<mode>.tflite` (`.onnx` for the ONNX mode; stem: the checkpoint's file name,
    or the model's name). The input size is `input_size`, else the model's fixed size, else its run's
    training crop (`input_size_of`). `source`: the file a model given as such was loaded from (for its
    provenance and the stem). `agreement=True` exports float32 first and compares every artifact with it.
    Returns StageResults.
    """
    source = checkpoint if isinstance(checkpoint, str) else source
    model = runtime.load_keras(checkpoint) if isinstance(checkpoint, str) else checkpoint
    origin = modes.Origin.of(model, source=source)
    artifact = modes.Artifact(input_size_of(model, input_size, origin.provenance), output=output, io_dtype=io_dtype)
    for name in mode_names:
        modes.get(name)
    if agreement:
        mode_names = ["float32", *(name for name in mode_names if name != "float32")]
    stem = os.path.join(out_dir, stem or (artifact_stem(source) if source else model.name))
    results, reference = [], None
    for name in mode_names:
        if progress and modes.get(name).fine_tune:  # the fine-tune's own progress bar follows
            print(f"  {name}: {modes.get(name).summary}", flush=True)
        result = export_artifact(model, f"{stem}_{name}{modes.get(name).suffix}", mode=name, artifact=artifact,
                                 origin=origin, train=train, val=val, settings=settings, threads=threads, runs=runs,
                                 reference=reference)
        if agreement and reference is None:
            reference = result.path
            result.agreement = 1.0 if val is not None else None
        results.append(result)
        if progress:
            print(f"  {result.summary()}", flush=True)
    if progress and any(result.latency for result in results):  # timed files only: nothing to compare otherwise
        for note in profiler.slower_than_float32(results):
            print(f"  note: {note}", flush=True)
    return results


def write_manifest(out_dir, results, title="Export report", **meta):
    """Writes `manifest.json` (the entries and `meta`) and `report.md` (a table) into `out_dir`; returns the entries."""
    entries = [result.entry() for result in results]
    files.write_json(os.path.join(out_dir, "manifest.json"), {**meta, "artifacts": entries})
    threads = sorted({t for e in entries for t in e["latency_ms"]}, key=int)
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items() if not isinstance(value, (dict, list))]
    lines += ["", report.artifacts_table(entries, threads), ""]
    files.write_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines).encode())
    return entries


def int8_latency(candidate, *, size, threads: int, classes: int = 21, calibration=None, runs: int = 5) -> float:
    """Milliseconds of one int8 LiteRT call (uint8 image in, logits out) of a `kseg.training.latency.Candidate` built
    with random weights and batch-norm statistics taken from the calibration images (default: 4 synthetic ones), so
    that its int8 scales are a trained model's (`kseg.models.statistics`), the mean of `runs`."""
    import tempfile

    import kseg
    from kseg.models import statistics

    model = kseg.models.get(candidate.model, classes, **candidate.kwargs)
    if calibration is None:
        calibration = kseg.data.load("synthetic", "train", num_images=4, size=tuple(size))
    images = litert.calibration_images(calibration, tuple(size), count=4)
    statistics.set_batch_norm_statistics(model, np.concatenate(images))
    with tempfile.TemporaryDirectory(prefix="kseg-latency-") as folder:
        path = os.path.join(folder, f"{candidate.model}_int8.tflite")
        litert.to_litert(model, path, mode="int8", artifact=modes.Artifact(tuple(size)), calibration=calibration,
                         num_calibration=4)
        return bench.benchmark(path, threads=threads, runs=runs, warmup=2)["mean_ms"]


def choose_by_latency(config, measure=None):
    """`config` (a `kseg.training.TrainConfig` with `max_latency`) with the model and width
    `kseg.training.latency.choose` picks, measured by `measure` (default `int8_latency` with the data's classes),
    and the table it chose from (`latency_table`, stored in the run's config.json); prints the table. A run folder
    that chose for the same budget before keeps its choice (`kseg.training.latency.previous`)."""
    import functools

    import kseg
    from kseg.training import latency

    if config.model_kwargs:
        raise KsegError("--max-latency chooses the width as well: leave out --model-arg")
    size = tuple(config.latency_size or latency.SIZE)
    threads = config.latency_threads or latency.THREADS
    stored = latency.previous(config)
    if stored:
        model, kwargs, table = stored
        print(f"kseg train: {config.out_dir} already chose {model} for {config.max_latency:g} ms: kept", flush=True)
        return dataclasses.replace(config, model=model, model_kwargs=kwargs, latency_size=size,
                                   latency_threads=threads, latency_table=table)
    if measure is None:
        classes = config.num_classes or kseg.data.load(config.data, "train", **config.data_options).num_classes
        calibration = kseg.data.load("synthetic", "train", num_images=4, size=size)
        measure = functools.partial(int8_latency, classes=classes, calibration=calibration)
    chosen, table = latency.choose(config.max_latency, measure, size=size, threads=threads, model=config.model)
    print(latency.describe(table, config.max_latency, size=size, threads=threads), flush=True)
    return dataclasses.replace(config, model=chosen.model, model_kwargs=dict(chosen.kwargs), latency_size=size,
                               latency_threads=threads, latency_table=table)


def train_zoo(out_dir, input_size, epochs, data):
    """Trains every registered architecture (its narrow test configuration) briefly; returns the checkpoints."""
    import kseg
    from kseg import training

    checkpoints = []
    for name in kseg.models.names():
        run_dir = os.path.join(out_dir, "runs", name)
        best = os.path.join(run_dir, "best.keras")
        builder_args = dict(kseg.models.architecture(name).tiny)
        if not os.path.exists(best):
            print(f"training {name} for {epochs} epoch(s)", flush=True)
            training.train(training.TrainConfig(
                model=name, model_kwargs=builder_args, data=data,
                data_options={"num_images": 64, "size": input_size} if data == "synthetic" else {},
                crop_size=input_size, epochs=epochs, out_dir=run_dir, verbose=0))
            provenance.write_keras_sidecar(best, name, builder_args, data=data, crop_size=list(input_size))
        checkpoints.append(best)
    return checkpoints
